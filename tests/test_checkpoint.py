"""The Trainer never loses a good state: damaged checkpoint files are named
and refused, a resume under another configuration is refused with the
difference, a failed resume leaves the trainer untouched, no checkpoint is
written holding a non-finite value, non-finite gradients stop training
before the update, and a run killed mid-write (SIGKILL) resumes cleanly
with each step logged once."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ddm_fast.loss import DiffusionLoss
from ddm_fast.scheduler import CosineScheduler, LinearScheduler
from ddm_fast.training import CheckpointError, Trainer, load_checkpoint_file

from test_training import (TinyNet, _assert_bitwise_equal, _snapshot,
                           make_trainer, read_log, toy_data)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture
def written(tmp_path):
    """A trainer that ran 3 steps and wrote its checkpoint."""
    trainer = make_trainer(tmp_path, max_steps=6)
    trainer.fit(until=3)
    return trainer


# ------------------------------------------------------------ damaged files
def _flip_a_weight_bit(path, tensor):
    raw = bytearray(open(path, "rb").read())
    needle = tensor.detach().contiguous().view(torch.uint8).numpy().tobytes()
    where = raw.find(needle)
    assert where >= 0, "the weight's bytes are stored uncompressed"
    raw[where + len(needle) // 2] ^= 0x10
    open(path, "wb").write(bytes(raw))


class NotAWeight:  # a pickled object weights_only refuses to rebuild
    pass


DAMAGES = {
    "empty": (lambda path, trainer: open(path, "wb").close(), "empty"),
    "truncated": (lambda path, trainer: open(path, "r+b").truncate(
        os.path.getsize(path) // 2), "truncated or corrupt"),
    "random bytes": (lambda path, trainer: open(path, "wb").write(
        bytes(torch.randint(0, 256, (4096,), generator=torch.Generator()
                            .manual_seed(0), dtype=torch.uint8).tolist())),
        "truncated or corrupt"),
    "another torch file": (lambda path, trainer: torch.save(
        {"weights": torch.ones(3)}, path), "not a ddm_fast checkpoint"),
    "a pickled object": (lambda path, trainer: torch.save(NotAWeight(), path),
                         "not a ddm_fast checkpoint.*unsafe"),
    "one flipped bit": (lambda path, trainer: _flip_a_weight_bit(
        path, trainer.network.body[0].weight), "fails its checksum"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_checkpoint_is_named_and_refused(written, damage):
    path = written.checkpoint_path
    corrupt, reason = DAMAGES[damage]
    corrupt(path, written)
    fresh = make_trainer(os.path.dirname(path), net_seed=3, max_steps=6)
    before = _snapshot(fresh)
    with pytest.raises(CheckpointError, match=reason) as info:
        fresh.resume()
    assert path in str(info.value)
    _assert_bitwise_equal(_snapshot(fresh), before)


def test_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint_file(tmp_path / "absent.pt")


# ------------------------------------------------------------ configuration
MISMATCHES = {
    "batch size": (dict(batch_size=16), "batch_size: checkpoint 32, this trainer 16"),
    "seed": (dict(seed=5), "seed: checkpoint 123"),
    "learning rate": (dict(lr=1e-3), "optimizer"),
    "scheduler class with the same parameters": (
        dict(scheduler=CosineScheduler(gamma_min=-8., gamma_max=8.)),
        "scheduler:.*LinearScheduler.*CosineScheduler"),
    "scheduler parameters": (
        dict(scheduler=LinearScheduler(gamma_min=-6., gamma_max=8.)),
        "scheduler:.*gamma_min=-8.*gamma_min=-6"),
    "parameterization": (dict(param="eps"), "parameterization:.*v.*eps"),
    "network architecture": (dict(hidden=16), "network:.*out_features=32.*out_features=16"),
    "data set size": (dict(train_data=toy_data(128)), "train_samples: checkpoint 256, this trainer 128"),
}


def _trainer_with(tmp_path, change):
    change = dict(change)
    hidden = change.pop("hidden", 32)
    param = change.pop("param", "v")
    scheduler = change.pop("scheduler", LinearScheduler(gamma_min=-8., gamma_max=8.))
    torch.manual_seed(4)
    options = dict(batch_size=32, max_steps=6, lr=3e-3, warmup_steps=5,
                   ema_decay=0.9, checkpoint_every=1000, log_every=1, seed=123,
                   out_dir=str(tmp_path), device="cpu", progress=False)
    options.update(change)
    data = options.pop("train_data", toy_data())
    return Trainer(TinyNet(hidden=hidden),
                   DiffusionLoss(scheduler, param=param, weighting="sigmoid"),
                   data, **options)


@pytest.mark.parametrize("name", list(MISMATCHES))
def test_resume_under_another_configuration_names_the_difference(
        tmp_path, name):
    _trainer_with(tmp_path, {}).fit(until=2)
    change, difference = MISMATCHES[name]
    other = _trainer_with(tmp_path, change)
    before = _snapshot(other)
    with pytest.raises(CheckpointError, match=difference):
        other.resume()
    _assert_bitwise_equal(_snapshot(other), before)
    # the same configuration resumes
    assert _trainer_with(tmp_path, {}).resume() == 2


def test_failed_restore_leaves_the_trainer_as_it_was(written, monkeypatch):
    """A state that passes every check but fails half-way (here: the
    optimizer's) restores nothing, the network's weights included."""
    fresh = make_trainer(os.path.dirname(written.checkpoint_path), net_seed=9,
                         max_steps=6)
    before = _snapshot(fresh)
    real_load = type(fresh.optimizer).load_state_dict
    calls = []

    def failing_load(self, state):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("loaded state dict has a different number of groups")
        return real_load(self, state)

    monkeypatch.setattr(type(fresh.optimizer), "load_state_dict", failing_load)
    with pytest.raises(CheckpointError, match="nothing was restored"):
        fresh.resume()
    _assert_bitwise_equal(_snapshot(fresh), before)
    assert fresh.step == 0


# ------------------------------------------------------ non-finite values
class NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class NaNGradientAfter(TinyNet):
    """A finite output whose gradient is NaN from forward call ``bad_call`` on."""

    def __init__(self, bad_call: int):
        super().__init__()
        self.calls, self.bad_call = 0, bad_call

    def forward(self, z, normalized_gamma, mask=None, **conditioning):
        self.calls += 1
        out = super().forward(z, normalized_gamma, mask)
        return NaNGradient.apply(out) if self.calls >= self.bad_call else out


@pytest.mark.parametrize("grad_clip", [1.0, None])
def test_finite_loss_with_non_finite_gradient_stops_before_the_update(
        tmp_path, grad_clip):
    torch.manual_seed(0)
    network = NaNGradientAfter(bad_call=4)
    trainer = Trainer(network, DiffusionLoss(LinearScheduler()), toy_data(),
                      batch_size=32, max_steps=10, checkpoint_every=2,
                      grad_clip=grad_clip, out_dir=str(tmp_path), device="cpu",
                      progress=False)
    with pytest.raises(FloatingPointError,
                       match=r"non-finite gradient.*finite loss.*step 4.*"
                             r"after step 3.*\(step 2\)"):
        trainer.fit()
    assert trainer.step == 3
    assert all(torch.isfinite(p).all() for p in network.parameters())
    assert all(torch.isfinite(p).all() for p in trainer.ema.module.parameters())
    assert load_checkpoint_file(trainer.checkpoint_path)["step"] == 2


def test_no_checkpoint_is_written_with_non_finite_weights(written):
    path = written.checkpoint_path
    before = open(path, "rb").read()
    with torch.no_grad():
        written.network.body[3].bias[1] = float("inf")
    with pytest.raises(FloatingPointError,
                       match=r"refusing to write a checkpoint.*"
                             r"model\.body\.3\.bias.*\(step 3\)"):
        written.save_checkpoint()
    assert open(path, "rb").read() == before


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_weights_made_non_finite_by_an_update_stop_the_next_step(
        tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, max_steps=8, checkpoint_every=2)
    real_step = trainer.optimizer.step

    def poisoned_step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        if trainer.step == 4:   # the update of step 5
            with torch.no_grad():
                trainer.network.body[0].weight[0, 0] = float("nan")
        return result

    monkeypatch.setattr(trainer.optimizer, "step", poisoned_step)
    with pytest.raises(FloatingPointError,
                       match=r"weights became non-finite.*step 5.*\(step 4\)"):
        trainer.fit()
    assert load_checkpoint_file(trainer.checkpoint_path)["step"] == 4


def test_nan_under_land_trains_and_checkpoints_finite_weights(tmp_path):
    """Sea-ice and ocean fields carry NaN over land: the masked data never
    reaches a weight, the log or the checkpoint."""
    data = toy_data(with_mask=True)
    data["data"] = data["data"].masked_fill(data["mask"] == 0, float("nan"))
    data["data"][0, :] = torch.where(data["mask"][0] == 0,
                                     torch.tensor(float("inf")), data["data"][0])
    trainer = make_trainer(tmp_path, max_steps=5, train_data=data,
                           val_data={k: v[:40] for k, v in data.items()})
    trainer.fit()
    assert all(torch.isfinite(torch.tensor(r["loss" if r["split"] == "train"
                                             else "val_loss"]))
               for r in read_log(tmp_path))
    state = load_checkpoint_file(trainer.checkpoint_path)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# ----------------------------------------------------------- killed writers
def test_orphaned_temporary_files_are_removed_on_start(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        orphan = tmp_path / f".checkpoint.pt.tmp-{dead.pid}"
        in_use = tmp_path / f".checkpoint.pt.tmp-{alive.pid}"
        other = tmp_path / ".notes.txt.tmp-1"
        for path in (orphan, in_use, other):
            path.write_bytes(b"partial")
        make_trainer(tmp_path)
        assert not orphan.exists()
        assert in_use.exists() and other.exists()   # not ours to delete
    finally:
        alive.kill()
        alive.wait()


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import torch
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_training import make_trainer

    trainer = make_trainer({out!r}, max_steps=8, checkpoint_every=2,
                           dropout=0.1)
    real_save = torch.save

    def save_then_die(obj, handle, *args, **kwargs):
        if trainer.step == 6:           # half-way through step 6's write
            handle.write(b"half a checkpoint")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, handle, *args, **kwargs)

    torch.save = save_then_die
    trainer.fit()
""")


def test_sigkill_mid_write_resumes_bitwise_with_each_step_logged_once(tmp_path):
    out = tmp_path / "killed"
    script = KILLED_RUN.format(root=ROOT, tests=HERE, out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    leftovers = [p.name for p in out.iterdir() if ".tmp-" in p.name]
    assert len(leftovers) == 1                       # the killed write's file
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint_file(out / "checkpoint.pt")["step"] == 4

    resumed = make_trainer(out, net_seed=5, max_steps=8, checkpoint_every=2,
                           dropout=0.1)
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    assert resumed.resume() == 4
    resumed.fit()

    straight = make_trainer(tmp_path / "straight", max_steps=8,
                            checkpoint_every=2, dropout=0.1)
    straight.fit()
    _assert_bitwise_equal(_snapshot(resumed), _snapshot(straight))
    steps = [r["step"] for r in read_log(out)]
    assert steps == list(range(1, 9))
    with open(out / "train_log.csv") as handle:
        rows = handle.read().splitlines()
    assert [row.split(",")[0] for row in rows] == ["step"] + [str(s) for s in range(1, 9)]

