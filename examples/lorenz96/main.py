"""Lorenz-96 climatology with a denoising diffusion model, end to end.

    python examples/lorenz96/main.py --out runs/l96

generates (or loads from the cache) Lorenz-96 trajectories (F = 8, 40
variables, dt = 0.05, RK4), trains a small circular 1-D conv denoiser with
:class:`ddm_fast.training.Trainer` (adaptive binarized noise schedule,
v-parameterization, optional masks), samples with the Heun sampler on the
EDM schedule, and scores the generated climatology against an independent
test trajectory, next to two baselines: a Gaussian with the training data's
mean and covariance, and the empirical optimal denoiser (which memorises its
training set). Writes ``samples.npy`` (N x 40, physical units),
``metrics.json``, PNG figures and the training log to ``--out``, and prints
the table. The defaults run in about 5-10 minutes on 2 CPU cores; ``--device
cuda --steps 50000 --channels 128`` and friends scale it up.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data import L96Config, load_or_generate  # noqa: E402
from metrics import evaluate  # noqa: E402
from network import L96Denoiser  # noqa: E402
import plots  # noqa: E402

from ddm_fast.callbacks import EvaluateSchedulerCallback  # noqa: E402
from ddm_fast.decoder import GaussianDecoder, state_prediction  # noqa: E402
from ddm_fast.encoder import GaussianEncoder  # noqa: E402
from ddm_fast.loss import DiffusionLoss  # noqa: E402
from ddm_fast.optimal_model import OptimalModel  # noqa: E402
from ddm_fast.sampler import HeunSampler  # noqa: E402
from ddm_fast.scheduler import (BinarizedScheduler, CosineScheduler,  # noqa: E402
                                EDMSamplingScheduler, LinearScheduler)
from ddm_fast.training import Trainer  # noqa: E402

SCORES = ("marginal_hellinger", "joint_hellinger", "autocorrelation_error",
          "log_spectral_distance_db", "nn_distance_samples",
          "nn_distance_test", "memorisation_ratio")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--out", required=True, help="output directory")
    add("--data-dir", default=None,
        help="cache directory of the trajectories (default: OUT/data)")
    add("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=1,
        help="torch CPU threads (0: torch's default). The network is small: "
             "with 2 threads the per-op synchronisation costs about as much "
             "as it saves, and on a loaded machine oversubscribed threads "
             "slow every step down by 10x or more")
    # model and training
    add("--steps", type=int, default=6000, help="training steps")
    add("--batch-size", type=int, default=256)
    add("--lr", type=float, default=2e-3)
    add("--warmup", type=int, default=200, help="warm-up steps")
    add("--ema-decay", type=float, default=0.999)
    add("--channels", type=int, default=32, help="network width")
    add("--blocks", type=int, default=4, help="residual blocks")
    add("--kernel-size", type=int, default=5)
    add("--param", default="v", choices=("eps", "v", "data", "edm", "flow"))
    add("--weighting", default="sigmoid",
        choices=("elbo", "sigmoid", "exponential", "edm"))
    add("--scheduler", default="binarized",
        choices=("binarized", "cosine", "linear"), help="training schedule")
    add("--gamma-min", type=float, default=-10.0)
    add("--gamma-max", type=float, default=10.0)
    add("--mask", default="none", choices=("none", "random", "fixed"),
        help="none; random per-sample masks (each variable masked with "
             "probability --mask-prob); or a fixed mask hiding --fixed-masked "
             "consecutive variables (training and sampling)")
    add("--mask-prob", type=float, default=0.5)
    add("--fixed-masked", type=int, default=8)
    add("--val-every", type=int, default=1000)
    # sampling and evaluation
    add("--sampler-steps", type=int, default=20, help="Heun steps")
    add("--n-samples", type=int, default=6000)
    add("--sample-batch", type=int, default=4096)
    add("--optimal-train", type=int, default=8000,
        help="training states held by the optimal model (0: skip it)")
    # data sizes
    add("--train-members", type=int, default=L96Config.train_members)
    add("--train-steps", type=int, default=L96Config.train_steps)
    add("--test-members", type=int, default=L96Config.test_members)
    add("--test-steps", type=int, default=L96Config.test_steps)
    add("--spinup", type=int, default=L96Config.n_spinup)
    add("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1 or args.n_samples < 2:
        parser.error("--batch-size and --steps must be >= 1, --n-samples >= 2")
    if not 0.0 <= args.mask_prob < 1.0:
        parser.error("--mask-prob must lie in [0, 1)")
    if not 0 <= args.fixed_masked <= 38:
        parser.error("--fixed-masked must lie in [0, 38]")
    return args


def make_scheduler(name: str, gamma_min: float, gamma_max: float):
    cls = {"binarized": BinarizedScheduler, "cosine": CosineScheduler,
           "linear": LinearScheduler}[name]
    return cls(gamma_min=gamma_min, gamma_max=gamma_max)


class RandomMask:
    """Batch transform: a fresh random mask per sample (each variable valid
    with probability 1 - p), drawn from the trainer's per-step generator."""

    def __init__(self, prob: float):
        self.prob = prob

    def __call__(self, batch, generator: torch.Generator):
        data = batch["data"]
        draw = torch.rand(data.shape, generator=generator)
        return {**batch, "mask": (draw >= self.prob).to(data.dtype)}


def draw_samples(network, args, mask: Optional[torch.Tensor], param: str,
                 seed: int) -> torch.Tensor:
    """``args.n_samples`` latent states from the Heun sampler on the EDM
    schedule, in chunks (member offsets keep the noise batch-independent)."""
    sampler = HeunSampler(
        EDMSamplingScheduler(gamma_min=args.gamma_min, gamma_max=args.gamma_max),
        timesteps=args.sampler_steps, denoising_network=network, param=param,
        gamma_min=args.gamma_min, gamma_max=args.gamma_max, seed=seed)
    sampler.sample_kwargs = {"device": torch.device(args.device),
                             "dtype": torch.float32}
    chunks = []
    for start in range(0, args.n_samples, args.sample_batch):
        size = min(args.sample_batch, args.n_samples - start)
        chunks.append(sampler.sample((size, 40), mask=mask, member_offset=start))
    return torch.cat(chunks)


def format_table(results: Dict[str, Dict[str, float]]) -> str:
    names = list(results)
    lines = [f"{'score':<26}" + "".join(f"{n:>14}" for n in names)]
    lines.append("-" * len(lines[0]))
    for score in SCORES:
        lines.append(f"{score:<26}" + "".join(
            f"{results[n][score]:>14.4f}" for n in names))
    return "\n".join(lines)


def setup_distributed(device: torch.device) -> torch.device:
    """Under ``torchrun`` (WORLD_SIZE > 1): join the process group (nccl on
    GPU, gloo on CPU) and give each process its own GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    timings = {}
    start_all = time.perf_counter()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = setup_distributed(torch.device(args.device))
    rank = dist.get_rank() if dist.is_initialized() else 0
    os.makedirs(args.out, exist_ok=True)

    # -- data (generated and cached by rank 0, then read by every rank)
    tic = time.perf_counter()
    config = L96Config(n_spinup=args.spinup, train_members=args.train_members,
                       train_steps=args.train_steps,
                       test_members=args.test_members,
                       test_steps=args.test_steps, seed=42)
    data_dir = args.data_dir or os.path.join(args.out, "data")
    if rank == 0:
        data = load_or_generate(data_dir, config)
    if dist.is_initialized():
        dist.barrier()
    if rank != 0:
        data = load_or_generate(data_dir, config)
    train, val, test = data["train"], data["val"], data["test"]
    mean, std = float(train.mean()), float(train.std())
    timings["data_s"] = time.perf_counter() - tic

    n_grid = train.shape[1]
    valid = np.ones(n_grid, dtype=bool)
    sample_mask, batch_transform = None, None
    train_tensors = {"data": torch.from_numpy(train)}
    val_tensors = {"data": torch.from_numpy(val)}
    if args.mask == "fixed":
        valid[n_grid - args.fixed_masked:] = False
        fixed = torch.from_numpy(valid.astype(np.float32))[None]
        sample_mask = fixed.to(device)
        train_tensors["mask"] = fixed.expand(len(train), n_grid)
        val_tensors["mask"] = fixed.expand(len(val), n_grid)
    elif args.mask == "random":
        batch_transform = RandomMask(args.mask_prob)
        val_draw = torch.rand(val.shape, generator=torch.Generator().manual_seed(1))
        val_tensors["mask"] = (val_draw >= args.mask_prob).float()

    # -- model and training
    torch.manual_seed(args.seed)
    network = L96Denoiser(channels=args.channels, n_blocks=args.blocks,
                          kernel_size=args.kernel_size)
    encoder = GaussianEncoder(mean=mean, std=std)
    loss_fn = DiffusionLoss(
        make_scheduler(args.scheduler, args.gamma_min, args.gamma_max),
        param=args.param, weighting=args.weighting)
    scheduler_plots = EvaluateSchedulerCallback()
    trainer = Trainer(
        network, loss_fn, train_tensors, encoder=encoder, val_data=val_tensors,
        batch_size=args.batch_size, max_steps=args.steps, lr=args.lr,
        warmup_steps=min(args.warmup, args.steps), ema_decay=args.ema_decay,
        val_every=min(args.val_every, args.steps),
        checkpoint_every=max(args.steps // 4, 1),
        log_every=max(1, min(100, args.steps // 10)), seed=args.seed,
        batch_transform=batch_transform, callbacks=[scheduler_plots],
        out_dir=args.out, device=device, progress=not args.no_progress)
    if rank == 0:
        print(f"training {sum(p.numel() for p in network.parameters())} "
              f"parameters for {args.steps} steps on {device}")
    tic = time.perf_counter()
    train_metrics = trainer.fit()
    timings["train_s"] = time.perf_counter() - tic
    if dist.is_initialized():
        # every rank holds the same weights: rank 0 samples and evaluates
        dist.destroy_process_group()
        if rank != 0:
            return {}

    # -- sampling (EMA weights) and the baselines
    decoder = GaussianDecoder(mean=mean, std=std,
                              prediction_func=state_prediction).to(device)
    tic = time.perf_counter()
    latent = draw_samples(trainer.ema_model, args, sample_mask, args.param,
                          seed=args.seed + 1)
    samples = decoder(latent, mask=sample_mask).cpu().numpy().astype(np.float32)
    timings["sample_s"] = time.perf_counter() - tic
    np.save(os.path.join(args.out, "samples.npy"), samples)

    rng = np.random.default_rng(args.seed + 2)
    gaussian = rng.multivariate_normal(train.mean(0), np.cov(train.T),
                                       size=args.n_samples).astype(np.float32)
    if args.mask == "fixed":
        gaussian[:, ~valid] = 0.0
    sets = {"model": samples, "gaussian": gaussian}

    if args.optimal_train > 0:
        tic = time.perf_counter()
        subset = rng.choice(len(train), min(args.optimal_train, len(train)),
                            replace=False)
        optimal_latent = encoder(torch.from_numpy(train[np.sort(subset)]))
        optimal = OptimalModel(optimal_latent.to(device), gamma_min=args.gamma_min,
                               gamma_max=args.gamma_max, dims=(-1,),
                               chunk_size=2048)
        latent = draw_samples(optimal, args, sample_mask, "eps", seed=args.seed + 3)
        sets["optimal"] = decoder(latent, mask=sample_mask).cpu().numpy()
        timings["optimal_s"] = time.perf_counter() - tic

    # -- evaluation
    tic = time.perf_counter()
    results = {name: evaluate(states, train, test, valid=valid)
               for name, states in sets.items()}
    timings["eval_s"] = time.perf_counter() - tic
    beats = results["model"]["joint_hellinger"] < results["gaussian"]["joint_hellinger"]

    tic = time.perf_counter()
    figures = [
        plots.plot_marginals(sets, test, os.path.join(args.out, "marginals.png"), valid),
        plots.plot_autocorrelation(sets, test, os.path.join(args.out, "autocorrelation.png"), valid),
        plots.plot_spectra(sets, test, os.path.join(args.out, "spectra.png"), valid),
        plots.plot_hovmoller(samples, test, os.path.join(args.out, "hovmoller.png")),
        plots.plot_joint(sets, test, os.path.join(args.out, "joint_neighbours.png")),
        plots.plot_training_log(os.path.join(args.out, "train_log.csv"),
                                os.path.join(args.out, "loss.png")),
    ]
    figures += scheduler_plots.save(trainer.scheduler, args.out)
    timings["plots_s"] = time.perf_counter() - tic
    timings["total_s"] = time.perf_counter() - start_all

    report = {
        "results": results,
        "model_beats_gaussian_joint_hellinger": bool(beats),
        "train": train_metrics,
        "timings": timings,
        "figures": [os.path.basename(f) for f in figures if f],
        "args": vars(args),
        "data": {"mean": mean, "std": std, "n_train": len(train),
                 "n_test": len(test)},
    }
    with open(os.path.join(args.out, "metrics.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    print(format_table(results))
    print(f"model {'BEATS' if beats else 'does NOT beat'} the Gaussian baseline "
          f"on the joint neighbour Hellinger distance "
          f"({results['model']['joint_hellinger']:.4f} vs "
          f"{results['gaussian']['joint_hellinger']:.4f})")
    print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"outputs (samples.npy, metrics.json, plots, checkpoint) in "
          f"{os.path.abspath(args.out)}")
    return report


if __name__ == "__main__":
    main()
