"""Tests of ddm_fast.training: the loop learns, resumes bit for bit, writes
checkpoints atomically and stops cleanly on a non-finite loss."""
from __future__ import annotations

import io
import json
import math
import os

import pytest
import torch

from ddm_fast.loss import DiffusionLoss
from ddm_fast.scheduler import BinarizedScheduler, LinearScheduler
from ddm_fast.training import (ExponentialMovingAverage, Trainer, atomic_save,
                               load_checkpoint_file, warmup_cosine_schedule)

DIM = 8


class TinyNet(torch.nn.Module):
    """An MLP on (z, normalized_gamma, mask); dropout exercises the global
    RNG state in the resume test."""

    def __init__(self, dim: int = DIM, hidden: int = 32, dropout: float = 0.0):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(2 * dim + 1, hidden), torch.nn.SiLU(),
            torch.nn.Dropout(dropout), torch.nn.Linear(hidden, dim))

    def forward(self, z, normalized_gamma, mask=None, **conditioning):
        valid = torch.ones_like(z) if mask is None else (mask != 0).to(z.dtype).expand_as(z)
        return self.body(torch.cat((z, valid, normalized_gamma.to(z.dtype)), dim=-1))


def toy_data(n: int = 256, seed: int = 0, with_mask: bool = False):
    """Correlated two-cluster data: a network does better than predicting 0."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[1.5] * DIM, [-1.5] * DIM])
    labels = torch.randint(0, 2, (n,), generator=gen)
    data = centres[labels] + 0.3 * torch.randn(n, DIM, generator=gen)
    out = {"data": data}
    if with_mask:
        out["mask"] = (torch.rand(n, DIM, generator=gen) > 0.3).float()
    return out


def make_trainer(tmp_path, *, net_seed=0, scheduler=None, max_steps=20,
                 dropout=0.0, train_data=None, **kwargs):
    torch.manual_seed(net_seed)
    network = TinyNet(dropout=dropout)
    loss_fn = DiffusionLoss(scheduler if scheduler is not None else
                            LinearScheduler(gamma_min=-8., gamma_max=8.),
                            param="v", weighting="sigmoid")
    options = dict(batch_size=32, max_steps=max_steps, lr=3e-3,
                   warmup_steps=5, ema_decay=0.9, val_every=1000,
                   checkpoint_every=1000, log_every=1, seed=123,
                   out_dir=str(tmp_path), device="cpu", progress=False)
    options.update(kwargs)
    return Trainer(network, loss_fn,
                   train_data if train_data is not None else toy_data(),
                   **options)


def read_log(path):
    with open(os.path.join(path, "train_log.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def test_tiny_run_loss_falls(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=200, log_every=10,
                           val_data=toy_data(64, seed=1), val_every=100)
    trainer.fit()
    rows = read_log(tmp_path)
    train = [r["loss"] for r in rows if r["split"] == "train"]
    val = [r["val_loss"] for r in rows if r["split"] == "val"]
    assert len(train) == 20 and len(val) == 2
    # the loss plateaus after ~80 steps; compare the first logged window
    # (step 10, nearly untrained) with the plateau's mean
    first, last = train[0], sum(train[-5:]) / 5
    assert last < 0.75 * first, (first, last)
    assert val[-1] < val[0]
    assert all(r["samples_per_s"] > 0 for r in rows if r["split"] == "train")
    with open(os.path.join(tmp_path, "train_log.csv")) as handle:
        header = handle.readline().strip().split(",")
    assert header[:3] == ["step", "split", "loss"]
    assert trainer.step == 200
    assert os.path.isfile(trainer.checkpoint_path)


def _snapshot(trainer):
    opt = trainer.optimizer.state_dict()
    return {
        "params": {k: v.clone() for k, v in trainer.network.state_dict().items()},
        "ema": {k: v.clone() for k, v in trainer.ema.module.state_dict().items()},
        "loss_fn": {k: v.clone() for k, v in trainer.loss_fn.state_dict().items()},
        "opt": {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                for i, s in opt["state"].items()},
        "lr": [g["lr"] for g in trainer.optimizer.param_groups],
        "generator": trainer.generator.get_state().clone(),
        "step": trainer.step,
    }


def _assert_bitwise_equal(a, b):
    assert a["step"] == b["step"]
    assert a["lr"] == b["lr"]
    assert torch.equal(a["generator"], b["generator"])
    for group in ("params", "ema", "loss_fn"):
        assert a[group].keys() == b[group].keys()
        for key in a[group]:
            assert torch.equal(a[group][key], b[group][key]), (group, key)
    assert a["opt"].keys() == b["opt"].keys()
    for index in a["opt"]:
        for key, value in a["opt"][index].items():
            other = b["opt"][index][key]
            assert torch.equal(value, other) if torch.is_tensor(value) \
                else value == other, (index, key)


def random_mask(batch, generator):
    return {**batch, "mask": (torch.rand(batch["data"].shape,
                                         generator=generator) > 0.25).float()}


def test_resume_is_bitwise_identical(tmp_path):
    k = 6
    common = dict(scheduler=None, max_steps=2 * k, dropout=0.1,
                  batch_transform=random_mask)
    # Adaptive scheduler: its buffers change every step and must resume too.
    straight = make_trainer(tmp_path / "straight", **{
        **common, "scheduler": BinarizedScheduler(gamma_min=-8., gamma_max=8.)})
    straight.fit()
    reference = _snapshot(straight)

    first = make_trainer(tmp_path / "split", **{
        **common, "scheduler": BinarizedScheduler(gamma_min=-8., gamma_max=8.)})
    first.fit(until=k)
    assert first.step == k
    # Scramble the global RNGs: the checkpoint must restore them.
    torch.manual_seed(999)
    # A new trainer with a different initialisation resumes the run.
    second = make_trainer(tmp_path / "split", net_seed=7, **{
        **common, "scheduler": BinarizedScheduler(gamma_min=-8., gamma_max=8.)})
    assert second.resume() == k
    second.fit()
    _assert_bitwise_equal(_snapshot(second), reference)
    # The run moved: the comparison is not between two untouched models.
    assert not torch.equal(reference["params"]["body.0.weight"],
                           _snapshot(make_trainer(tmp_path / "fresh", **{
                               **common, "scheduler": BinarizedScheduler(
                                   gamma_min=-8., gamma_max=8.)}))["params"]["body.0.weight"])


def test_resume_rejects_other_configuration(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4)
    trainer.fit()
    other = make_trainer(tmp_path, max_steps=8)
    with pytest.raises(ValueError, match="max_steps: checkpoint 4, this trainer 8"):
        other.resume()
    with pytest.raises(FileNotFoundError):
        other.resume(tmp_path / "missing.pt")


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, max_steps=6)
    trainer.fit(until=3)
    path = trainer.checkpoint_path
    with open(path, "rb") as handle:
        before = handle.read()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")     # a crash half-way through the write
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    monkeypatch.undo()
    with open(path, "rb") as handle:
        assert handle.read() == before
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["checkpoint.pt", "train_log.csv", "train_log.jsonl"])
    assert load_checkpoint_file(path)["step"] == 3


def test_atomic_save_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "x.pt"
    atomic_save({"a": torch.arange(3)}, path)
    atomic_save({"a": torch.arange(5)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(5))
    assert os.listdir(tmp_path / "sub") == ["x.pt"]


class NaNAfter(TinyNet):
    """Returns NaN from its ``bad_call``-th forward call on."""

    def __init__(self, bad_call: int):
        super().__init__()
        self.calls = 0
        self.bad_call = bad_call

    def forward(self, z, normalized_gamma, mask=None, **conditioning):
        self.calls += 1
        out = super().forward(z, normalized_gamma, mask)
        return out * float("nan") if self.calls >= self.bad_call else out


def test_non_finite_loss_stops_with_message_and_keeps_checkpoint(tmp_path):
    torch.manual_seed(0)
    network = NaNAfter(bad_call=6)
    trainer = Trainer(network, DiffusionLoss(LinearScheduler(), param="eps"),
                      toy_data(), batch_size=32, max_steps=20,
                      checkpoint_every=2, log_every=1, out_dir=str(tmp_path),
                      device="cpu", progress=False)
    with pytest.raises(FloatingPointError,
                       match=r"non-finite loss.*step 6.*weights are those after "
                             r"step 5.*checkpoint.*\(step 4\)"):
        trainer.fit()
    # No update was taken with the bad loss.
    assert trainer.step == 5
    assert all(torch.isfinite(p).all() for p in network.parameters())
    state = load_checkpoint_file(trainer.checkpoint_path)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    restored = Trainer(NaNAfter(bad_call=10 ** 9),
                       DiffusionLoss(LinearScheduler(), param="eps"),
                       toy_data(), batch_size=32, max_steps=20,
                       out_dir=str(tmp_path / "r"), device="cpu", progress=False)
    assert restored.resume(trainer.checkpoint_path) == 4


def test_masked_data_and_conditioning_reach_the_network(tmp_path):
    seen = {}

    class Recorder(TinyNet):
        def forward(self, z, normalized_gamma, mask=None, **conditioning):
            seen["mask"] = mask
            seen["conditioning"] = sorted(conditioning)
            seen["gamma"] = normalized_gamma
            return super().forward(z, normalized_gamma, mask)

    data = toy_data(64, with_mask=True)
    data["forcing"] = torch.ones(64, 1)
    trainer = Trainer(Recorder(), DiffusionLoss(LinearScheduler(), param="eps"),
                      data, batch_size=16, max_steps=2, out_dir=str(tmp_path),
                      device="cpu", progress=False)
    trainer.fit()
    assert seen["mask"].shape == (16, DIM)
    assert seen["conditioning"] == ["forcing"]
    assert seen["gamma"].shape == (16, 1)
    assert bool(((seen["gamma"] >= 0) & (seen["gamma"] <= 1)).all())


def test_callbacks_receive_hooks_in_order(tmp_path):
    events = []

    class Recorder:
        def on_train_start(self, trainer):
            events.append(("start", trainer.step))

        def on_train_batch_end(self, trainer, step, output):
            assert output.loss.ndim == 0 and output.gamma.shape == (32,)
            events.append(("batch", step))

        def on_validation_end(self, trainer, step, metrics):
            assert set(metrics) == {"val_loss"} and math.isfinite(metrics["val_loss"])
            assert trainer.scheduler is trainer.loss_fn.scheduler
            assert os.path.isdir(trainer.out_dir)
            events.append(("val", step))

        def on_train_end(self, trainer):
            events.append(("end", trainer.step))

    trainer = make_trainer(tmp_path, max_steps=4, val_every=2,
                           val_data=toy_data(40, seed=3), val_batch_size=16,
                           callbacks=[Recorder()])
    trainer.fit()
    assert events == [("start", 0), ("batch", 1), ("batch", 2), ("val", 2),
                      ("batch", 3), ("batch", 4), ("val", 4), ("end", 4)]


def test_validation_is_deterministic_and_masked(tmp_path):
    val = toy_data(50, seed=4, with_mask=True)
    trainer = make_trainer(tmp_path, max_steps=2, val_data=val, val_batch_size=16)
    first = trainer.validate()["val_loss"]
    assert trainer.validate()["val_loss"] == first
    # Masked values do not matter: scramble them, the loss stays.
    scrambled = {k: v.clone() for k, v in val.items()}
    scrambled["data"][val["mask"] == 0] = 1e3
    trainer.val_dataset.tensors = scrambled
    assert trainer.validate()["val_loss"] == pytest.approx(first, rel=1e-5)


def test_ema_matches_the_formula():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = ExponentialMovingAverage(model, decay=0.5)
    expected = model.weight.detach().clone()
    for n in range(4):
        with torch.no_grad():
            model.weight.add_(1.0)
        rate = min(0.5, (1 + n) / (10 + n))
        expected = rate * expected + (1 - rate) * model.weight.detach()
        ema.update(model)
    torch.testing.assert_close(ema.module.weight, expected)
    assert not ema.module.weight.requires_grad
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage(model, decay=1.0)


def test_warmup_cosine_schedule():
    factor = warmup_cosine_schedule(10, 110, min_ratio=0.1)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55)
    assert factor(110) == pytest.approx(0.1)
    assert factor(500) == pytest.approx(0.1)
    values = [factor(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_data_order_is_a_permutation_per_epoch(tmp_path):
    seen = []

    class Recorder(TinyNet):
        def forward(self, z, normalized_gamma, mask=None, **conditioning):
            seen.append(conditioning["index"].reshape(-1).tolist())
            return super().forward(z, normalized_gamma, mask)

    data = toy_data(64)
    data["index"] = torch.arange(64).float()[:, None]
    trainer = Trainer(Recorder(), DiffusionLoss(LinearScheduler()), data,
                      batch_size=16, max_steps=8, out_dir=str(tmp_path),
                      device="cpu", progress=False, seed=5)
    trainer.fit()
    epoch0 = sorted(i for batch in seen[:4] for i in batch)
    epoch1 = sorted(i for batch in seen[4:] for i in batch)
    assert epoch0 == epoch1 == list(range(64))
    assert seen[:4] != seen[4:]


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_outside_a_terminal_is_one_plain_line_per_interval(tmp_path):
    """Redirected to a file, the progress writes a line every log_every
    steps (never carriage-return redraws); on a terminal it is a bar."""
    stream = io.StringIO()
    make_trainer(tmp_path / "file", max_steps=7, log_every=3, progress=True,
                 progress_stream=stream).fit()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "train step 3/7", "train step 6/7", "train step 7/7"]
    assert all("loss" in line and "steps/s" in line for line in lines)

    terminal = FakeTerminal()
    make_trainer(tmp_path / "tty", max_steps=4, log_every=2, progress=True,
                 progress_stream=terminal).fit()
    assert "\r" in terminal.getvalue() and "4/4" in terminal.getvalue()


def test_argument_validation(tmp_path):
    net, loss = TinyNet(), DiffusionLoss(LinearScheduler())
    base = dict(out_dir=str(tmp_path), device="cpu", progress=False)
    with pytest.raises(TypeError, match="network"):
        Trainer(lambda z: z, loss, toy_data(), **base)
    with pytest.raises(TypeError, match="loss_fn"):
        Trainer(net, torch.nn.MSELoss(), toy_data(), **base)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(net, loss, toy_data(16), batch_size=32, **base)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(net, loss, toy_data(), batch_size=0, **base)
    with pytest.raises(ValueError, match="'data'"):
        Trainer(net, loss, {"x": torch.zeros(64, 2)}, **base)
    with pytest.raises(ValueError, match="first"):
        Trainer(net, loss, {"data": torch.zeros(64, 2), "mask": torch.ones(8, 2)}, **base)
    with pytest.raises(TypeError, match="train_data"):
        Trainer(net, loss, [1, 2, 3], **base)
    with pytest.raises(ValueError, match="lr"):
        Trainer(net, loss, toy_data(), lr=0.0, **base)
    with pytest.raises(ValueError, match="amp"):
        Trainer(net, loss, toy_data(), amp=True, **base)
    for name, value, error in (("lr", float("nan"), ValueError),
                               ("lr", "0.1", TypeError),
                               ("weight_decay", -1.0, ValueError),
                               ("grad_clip", float("inf"), ValueError),
                               ("ema_decay", 1.0, ValueError),
                               ("betas", (0.9,), TypeError),
                               ("progress", "yes", TypeError),
                               ("progress_stream", 5, TypeError)):
        with pytest.raises(error, match=name):
            Trainer(net, loss, toy_data(), **{**base, name: value})
    trainer = Trainer(net, loss, toy_data(), batch_size=32, max_steps=3, **base)
    with pytest.raises(ValueError, match="until"):
        trainer.fit(until=4)
