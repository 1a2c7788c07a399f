"""Data-parallel training: two gloo processes on CPU against one process.

The file doubles as the worker script: the test starts two copies of it
(``python tests/test_ddp.py --rank r ...``) with a torchrun-like environment
on 127.0.0.1, each trains a few steps under DistributedDataParallel, and
saves its final state. Both ranks must hold identical parameters, EMA and
noise-scheduler buffers, and these must match one process training on the
whole batch: the same data order, pseudo-times and noise (global offsets),
the loss normalised by the *global* count of valid elements (the masks give
the two ranks different counts), and the adaptive scheduler's statistics
reduced over ranks.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

import torch

N_SAMPLES, DIM, BATCH, STEPS = 48, 6, 8, 5


def make_data(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    data = torch.randn(n, DIM, generator=gen) * 2.0 + 1.0
    # Valid fractions from ~10 % to 100 % per sample: rank counts differ.
    keep = torch.rand(n, 1, generator=gen) * 0.9 + 0.1
    mask = (torch.rand(n, DIM, generator=gen) < keep).float()
    mask[:, 0] = 1.0
    return {"data": data, "mask": mask}


def run_training(out_dir: str):
    from ddm_fast.loss import DiffusionLoss
    from ddm_fast.scheduler import BinarizedScheduler
    from ddm_fast.training import Trainer

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(DIM + 1, 32), torch.nn.SiLU(),
                                  torch.nn.Linear(32, DIM))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = network

        def forward(self, z, normalized_gamma, mask=None):
            return self.body(torch.cat((z, normalized_gamma), dim=-1))

    class AffineEncoder(torch.nn.Module):
        """A learnable encoder: its gradients are outside DDP's reach."""

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.full((DIM,), 0.5))
            self.shift = torch.nn.Parameter(torch.zeros(DIM))

        def forward(self, data, mask=None):
            latent = data * self.scale + self.shift
            return latent if mask is None else latent * mask

    # learnable bounds: the scheduler's gradients are outside DDP's reach too
    loss_fn = DiffusionLoss(BinarizedScheduler(gamma_min=-8., gamma_max=8.,
                                               learnable=True),
                            param="v", weighting="sigmoid")
    trainer = Trainer(Net(), loss_fn, make_data(N_SAMPLES, 1),
                      encoder=AffineEncoder(),
                      val_data=make_data(20, 2), val_batch_size=10,
                      batch_size=BATCH, max_steps=STEPS, lr=1e-2,
                      warmup_steps=1, ema_decay=0.8, val_every=STEPS,
                      checkpoint_every=STEPS, log_every=1, seed=11,
                      out_dir=out_dir, device="cpu", progress=False)
    trainer.fit()
    return {"params": trainer.network.state_dict(),
            "ema": trainer.ema.module.state_dict(),
            "loss_fn": trainer.loss_fn.state_dict(),
            "encoder": trainer.encoder.state_dict(),
            "val_loss": trainer.last_val_metrics["val_loss"]}


def _worker(args) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method="env://")
    try:
        state = run_training(args.out)
        torch.save(state, os.path.join(args.out, f"rank{dist.get_rank()}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path):
    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--out", str(ddp_dir)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=50)[0].decode())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output

    ranks = [torch.load(ddp_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = run_training(str(tmp_path / "single"))
    torch.manual_seed(0)
    initial = torch.nn.Linear(DIM + 1, 32).weight.detach()
    for group in ("params", "ema", "loss_fn", "encoder"):
        for key, value in ranks[0][group].items():
            assert torch.equal(value, ranks[1][group][key]), (group, key)
            torch.testing.assert_close(value, single[group][key], rtol=1e-5,
                                       atol=1e-6, msg=f"{group}.{key}")
    # Training moved the weights (the comparison is not trivially true).
    assert not torch.allclose(single["params"]["body.0.weight"], initial)
    assert ranks[0]["val_loss"] == ranks[1]["val_loss"]
    assert abs(ranks[0]["val_loss"] - single["val_loss"]) <= 1e-5 * abs(single["val_loss"])
    # Only rank 0 wrote the checkpoint and the logs.
    assert sorted(p.name for p in ddp_dir.iterdir()) == [
        "checkpoint.pt", "rank0.pt", "rank1.pt", "train_log.csv",
        "train_log.jsonl"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    _worker(parser.parse_args())
