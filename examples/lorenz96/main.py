"""Lorenz-96 climatology with a denoising diffusion model, end to end.

    python examples/lorenz96/main.py --out runs/l96

generates (or loads from the cache) Lorenz-96 trajectories (F = 8, 40
variables, dt = 0.05, RK4), trains a small circular 1-D conv denoiser with
:class:`ddm_fast.training.Trainer` (adaptive binarized noise schedule,
v-parameterization, optional masks), samples with DPM-Solver++(2M) on the
EDM time grid, and scores the generated climatology against an independent
test trajectory, next to two baselines: a Gaussian with the training data's
mean and covariance, and the empirical optimal denoiser (which memorises its
training set). Writes ``samples.npy`` (N x 40, physical units),
``metrics.json``, PNG figures and the training log to ``--out``, and prints
the table. The run time of the defaults is measured in the example's
README; ``--device cuda --steps 50000 --channels 128`` and friends scale it
up.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import json
import os
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data import L96Config, load_or_generate, rk4_step  # noqa: E402
from metrics import evaluate, nearest_distance  # noqa: E402
from network import L96Denoiser  # noqa: E402
import plots  # noqa: E402

from ddm_fast.callbacks import Callback, EvaluateSchedulerCallback  # noqa: E402
from ddm_fast.decoder import GaussianDecoder, state_prediction  # noqa: E402
from ddm_fast.encoder import GaussianEncoder  # noqa: E402
from ddm_fast.ensemble import sample_ensemble  # noqa: E402
from ddm_fast.loss import DiffusionLoss  # noqa: E402
from ddm_fast.optimal_model import OptimalModel  # noqa: E402
from ddm_fast.sampler import DPMSolverPP2MSampler, HeunSampler  # noqa: E402
from ddm_fast.scheduler import (BinarizedScheduler, CosineScheduler,  # noqa: E402
                                EDMSamplingScheduler, LinearScheduler)
from ddm_fast.training import Trainer  # noqa: E402

SCORES = ("marginal_hellinger", "joint_hellinger", "autocorrelation_error",
          "log_spectral_distance_db", "nn_distance_samples",
          "nn_distance_test", "memorisation_ratio")
# The scores on which lower is better (the distances to the test set): the
# model must beat the Gaussian baseline on each. The nearest-neighbour
# distances and their ratio describe memorisation instead.
COMPARED = ("marginal_hellinger", "joint_hellinger", "autocorrelation_error",
            "log_spectral_distance_db")


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
    add("--steps", type=int, default=4500, help="training steps")
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
    add("--sampler", default="dpmpp2m", choices=tuple(SAMPLERS),
        help="dpmpp2m: DPM-Solver++(2M), one network call per step; heun: "
             "Heun, two calls per step (see the example's README for why "
             "dpmpp2m with 80 steps is the default)")
    add("--sampler-steps", type=int, default=80,
        help="sampler steps on the EDM time grid (rho = 7)")
    add("--n-samples", type=int, default=6000)
    add("--sample-batch", type=int, default=4096)
    add("--optimal-train", type=int, default=4000,
        help="training states held by the optimal model (0: skip it)")
    # data sizes
    add("--train-members", type=int, default=L96Config.train_members)
    add("--train-steps", type=int, default=L96Config.train_steps)
    add("--test-members", type=int, default=L96Config.test_members)
    add("--test-steps", type=int, default=L96Config.test_steps)
    add("--spinup", type=int, default=L96Config.n_spinup)
    add("--no-progress", action="store_true",
        help="no progress bar: a line about every tenth of the training "
             "instead (for logs)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1 or args.n_samples < 2 \
            or args.sampler_steps < 1:
        parser.error("--batch-size, --steps and --sampler-steps must be >= 1, "
                     "--n-samples >= 2")
    if not 0.0 <= args.mask_prob < 1.0:
        parser.error("--mask-prob must lie in [0, 1)")
    if not 0 <= args.fixed_masked <= 38:
        parser.error("--fixed-masked must lie in [0, 38]")
    return args


# sampler name -> (class, network calls per step)
SAMPLERS = {"dpmpp2m": DPMSolverPP2MSampler, "heun": HeunSampler}
CALLS_PER_STEP = {"dpmpp2m": 1, "heun": 2}


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
                 seed: int, path: Optional[str] = None) -> torch.Tensor:
    """``args.n_samples`` latent states from ``args.sampler`` on the EDM
    time grid, ``args.sample_batch`` members at a time
    (:func:`ddm_fast.ensemble.sample_ensemble`: member k's noise depends on
    (seed, k) only). With ``path`` (and xarray installed) the latent members
    are also written there as an xarray Dataset, chunk by chunk."""
    sampler = SAMPLERS[args.sampler](
        EDMSamplingScheduler(gamma_min=args.gamma_min, gamma_max=args.gamma_max),
        timesteps=args.sampler_steps, denoising_network=network, param=param,
        gamma_min=args.gamma_min, gamma_max=args.gamma_max, seed=seed,
        pbar=False)
    sampler.sample_kwargs = {"device": torch.device(args.device),
                             "dtype": torch.float32}
    if path is not None and importlib.util.find_spec("xarray") is None:
        path = None  # the ensemble extra is optional: samples.npy only
    if path is not None and os.path.exists(path):
        # a file of an earlier run would be resumed (its members kept):
        # this run's network is new, so its members are drawn afresh
        os.remove(path)
    result = sample_ensemble(sampler, args.n_samples, (40,),
                             chunk=args.sample_batch, seed=seed, mask=mask,
                             path=path, dims=("site",), progress=False)
    if path is None:
        return result
    return torch.from_numpy(result["samples"].values).to(args.device)


class PhaseClock:
    """Announces each phase with a time estimate and reports its measured
    wall time (into ``timings[name + "_s"]``) and the process's CPU time
    (``cpu_timings``) when it ends; silent on ranks other than 0.

    With ``--threads 1`` the CPU time is about what the wall time would be
    on an otherwise idle machine, so a run on a shared machine still tells
    how long the job takes."""

    def __init__(self, timings: Dict[str, float], verbose: bool = True):
        self.timings = timings
        self.cpu_timings: Dict[str, float] = {}
        self.verbose = verbose

    @contextlib.contextmanager
    def phase(self, name: str, what: str, estimate_s: Optional[float]
              ) -> Iterator[None]:
        if self.verbose:
            guess = "" if estimate_s is None else \
                f" (estimate: {format_duration(estimate_s)})"
            print(f"[{name}] {what}{guess} ...", flush=True)
        tic, cpu_tic = time.perf_counter(), time.process_time()
        yield
        elapsed = time.perf_counter() - tic
        cpu = time.process_time() - cpu_tic
        self.timings[f"{name}_s"] = elapsed
        self.cpu_timings[f"{name}_s"] = cpu
        if self.verbose:
            print(f"[{name}] done in {format_duration(elapsed)} (CPU time "
                  f"{format_duration(cpu)})", flush=True)


def format_duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{int(seconds // 60)} min {int(round(seconds % 60)):02d} s"


def time_call(function: Callable[[], object], repeats: int = 2) -> float:
    """Seconds per call of ``function`` (best of ``repeats`` after one
    warm-up call): the basis of the printed phase estimates."""
    def synchronise():   # GPU work is asynchronous: wait for it
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
    function()
    synchronise()
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        function()
        synchronise()
        best = min(best, time.perf_counter() - tic)
    return best


def estimate_training_s(network, loss_fn, latent: torch.Tensor,
                        steps: int) -> float:
    """Time a few optimisation steps of a throw-away copy of the network
    (explicit noise seeds, so no generator the training uses is touched)
    and scale to ``steps``; validation and EMA add about 10 %."""
    network = copy.deepcopy(network)
    loss_fn = copy.deepcopy(loss_fn)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    time_grid = torch.linspace(0.01, 0.99, latent.shape[0])

    def one_step():
        optimizer.zero_grad()
        loss_fn(network, latent, seed=0, time=time_grid).loss.backward()
        optimizer.step()
    return 1.1 * steps * time_call(one_step)


class ProgressLines(Callback):
    """A line with the loss, elapsed time and remaining-time estimate about
    every tenth of the training (for logs, where a progress bar is
    unreadable)."""

    def __init__(self, total_steps: int, lines: int = 10):
        self.total = total_steps
        self.every = max(1, total_steps // lines)
        self.start = None

    def on_train_start(self, trainer) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, step: int, output) -> None:
        if step % self.every and step != self.total:
            return
        elapsed = time.perf_counter() - self.start
        left = elapsed / step * (self.total - step)
        loss = getattr(output, "loss", None)
        shown = "" if loss is None else f"loss {float(loss.detach()):.4f}, "
        print(f"  step {step}/{self.total}: {shown}{format_duration(elapsed)} "
              f"elapsed, about {format_duration(left)} left", flush=True)


def estimate_data_s(config: L96Config, data_dir: str) -> float:
    """Seconds to load the cached trajectories (about 1 s) or to integrate
    them: 20 timed RK4 steps of the largest ensemble, scaled to every
    split's spin-up and kept steps."""
    params = os.path.join(data_dir, "l96_params.json")
    if os.path.exists(params):
        with open(params) as handle:
            if json.load(handle) == dataclasses.asdict(config):
                return 1.0
    members = max(config.train_members, config.val_members, config.test_members)
    state = np.full((members, config.n_grid), config.forcing)
    per_step = time_call(lambda: rk4_step(state, config.dt, config.forcing), 20)
    steps = 3 * config.n_spinup + config.train_steps + config.val_steps \
        + config.test_steps
    return per_step * steps + 1.0


def estimate_sampling_s(network, args, mask) -> float:
    """Seconds to draw ``args.n_samples`` samples: one timed network call on
    a full chunk, scaled to every sample and the sampler's calls."""
    size = min(args.sample_batch, args.n_samples)
    z = torch.zeros(size, 40, device=args.device)
    gamma = torch.full((size, 1), 0.5, device=args.device)
    kwargs = {} if mask is None else {"mask": mask}
    with torch.no_grad():
        per_call = time_call(lambda: network(z, normalized_gamma=gamma, **kwargs), 1)
    return per_call * args.n_samples / size * CALLS_PER_STEP[args.sampler] \
        * args.sampler_steps


def estimate_evaluation_s(n_sets: int, train, test, valid) -> float:
    """Seconds to score ``n_sets`` sets: the nearest-training-state search
    (2000 samples and 2000 test states per set) dominates; timed on 200."""
    queries = test[:200, valid]
    per_query = time_call(lambda: nearest_distance(queries, train[:, valid]), 1) / 200
    return n_sets * 2 * min(2000, len(test)) * per_query + 1.0 * n_sets


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
    timings: Dict[str, float] = {}
    start_all, start_cpu = time.perf_counter(), time.process_time()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = setup_distributed(torch.device(args.device))
    rank = dist.get_rank() if dist.is_initialized() else 0
    clock = PhaseClock(timings, verbose=rank == 0)
    os.makedirs(args.out, exist_ok=True)

    # -- data (generated and cached by rank 0, then read by every rank)
    config = L96Config(n_spinup=args.spinup, train_members=args.train_members,
                       train_steps=args.train_steps,
                       test_members=args.test_members,
                       test_steps=args.test_steps, seed=42)
    data_dir = args.data_dir or os.path.join(args.out, "data")
    with clock.phase("data", f"Lorenz-96 trajectories (cache: {data_dir})",
                     estimate_data_s(config, data_dir)):
        if rank == 0:
            data = load_or_generate(data_dir, config)
        if dist.is_initialized():
            dist.barrier()
        if rank != 0:
            data = load_or_generate(data_dir, config)
    train, val, test = data["train"], data["val"], data["test"]
    mean, std = float(train.mean()), float(train.std())

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
    callbacks = [scheduler_plots]
    if rank == 0 and args.no_progress:   # lines instead of the progress bar
        callbacks.append(ProgressLines(args.steps))
    trainer = Trainer(
        network, loss_fn, train_tensors, encoder=encoder, val_data=val_tensors,
        batch_size=args.batch_size, max_steps=args.steps, lr=args.lr,
        warmup_steps=min(args.warmup, args.steps), ema_decay=args.ema_decay,
        val_every=min(args.val_every, args.steps),
        checkpoint_every=max(args.steps // 4, 1),
        log_every=max(1, min(100, args.steps // 10)), seed=args.seed,
        batch_transform=batch_transform, callbacks=callbacks,
        out_dir=args.out, device=device, progress=not args.no_progress)
    n_parameters = sum(p.numel() for p in network.parameters())
    estimate = None
    if rank == 0:
        batch = encoder(torch.from_numpy(train[:args.batch_size])).to(device)
        estimate = estimate_training_s(network, loss_fn, batch, args.steps)
    with clock.phase("train", f"training {n_parameters} parameters for "
                     f"{args.steps} steps on {device}", estimate):
        train_metrics = trainer.fit()
    if dist.is_initialized():
        # every rank holds the same weights: rank 0 samples and evaluates
        dist.destroy_process_group()
        if rank != 0:
            return {}

    # -- sampling (EMA weights) and the baselines
    decoder = GaussianDecoder(mean=mean, std=std,
                              prediction_func=state_prediction).to(device)
    model = trainer.ema_model
    with clock.phase("sample", f"drawing {args.n_samples} samples with "
                     f"{args.sampler_steps} {args.sampler} steps",
                     estimate_sampling_s(model, args, sample_mask)):
        latent = draw_samples(model, args, sample_mask, args.param,
                              seed=args.seed + 1,
                              path=os.path.join(args.out, "ensemble.nc"))
        samples = decoder(latent, mask=sample_mask).cpu().numpy().astype(np.float32)
    np.save(os.path.join(args.out, "samples.npy"), samples)

    rng = np.random.default_rng(args.seed + 2)
    gaussian = rng.multivariate_normal(train.mean(0), np.cov(train.T),
                                       size=args.n_samples).astype(np.float32)
    if args.mask == "fixed":
        gaussian[:, ~valid] = 0.0
    sets = {"model": samples, "gaussian": gaussian}

    if args.optimal_train > 0:
        subset = rng.choice(len(train), min(args.optimal_train, len(train)),
                            replace=False)
        optimal_latent = encoder(torch.from_numpy(train[np.sort(subset)]))
        optimal = OptimalModel(optimal_latent.to(device), gamma_min=args.gamma_min,
                               gamma_max=args.gamma_max, dims=(-1,),
                               chunk_size=2048)
        with clock.phase("optimal", f"sampling the optimal model over "
                         f"{len(subset)} training states",
                         estimate_sampling_s(optimal, args, sample_mask)):
            latent = draw_samples(optimal, args, sample_mask, "eps",
                                  seed=args.seed + 3)
            sets["optimal"] = decoder(latent, mask=sample_mask).cpu().numpy()

    # -- evaluation
    with clock.phase("eval", f"scoring {len(sets)} sets against "
                     f"{len(test)} test states",
                     estimate_evaluation_s(len(sets), train, test, valid)):
        results = {name: evaluate(states, train, test, valid=valid)
                   for name, states in sets.items()}
    beats = {score: bool(results["model"][score] < results["gaussian"][score])
             for score in COMPARED}

    step = trainer.step
    out = lambda name: os.path.join(args.out, name)  # noqa: E731
    with clock.phase("plots", "figures", 10.0):
        figures = [
            plots.plot_marginals(sets, test, out("marginals.png"), valid, step=step),
            plots.plot_autocorrelation(sets, test, out("autocorrelation.png"),
                                       valid, step=step),
            plots.plot_spectra(sets, test, out("spectra.png"), valid, step=step),
            plots.plot_joint(sets, test, out("joint_neighbours.png"),
                             valid=valid, step=step),
            plots.plot_hovmoller(samples, test, out("hovmoller.png"),
                                 valid=valid, step=step),
            plots.plot_training_log(out("train_log.csv"), out("loss.png"),
                                    step=step),
        ]
        for name, figure in scheduler_plots.figures(
                trainer.scheduler, step=step).items():
            path = out(f"scheduler_{name}.png")
            figure.savefig(path, dpi=100)
            figures.append(path)
        figures = [f for f in figures if f]
        plots.plot_overview(figures, out("overview.png"), heading=(
            f"Lorenz-96 example: model after {step} training steps, "
            f"{args.n_samples} samples"))
        figures.append(out("overview.png"))
    timings["total_s"] = time.perf_counter() - start_all
    clock.cpu_timings["total_s"] = time.process_time() - start_cpu

    report = {
        "results": results,
        "model_beats_gaussian": beats,
        "model_beats_gaussian_joint_hellinger": beats["joint_hellinger"],
        "variance_ratio_model_test": float(samples[:, valid].var()
                                           / test[:, valid].var()),
        "train": train_metrics,
        "timings": timings,
        "cpu_timings": clock.cpu_timings,
        "figures": [os.path.basename(f) for f in figures],
        "args": vars(args),
        "data": {"mean": mean, "std": std, "n_train": len(train),
                 "n_test": len(test)},
    }
    with open(out("metrics.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    print(format_table(results))
    print(f"sample standard deviation: model {samples[:, valid].std():.3f}, "
          f"test {test[:, valid].std():.3f} (variance ratio "
          f"{report['variance_ratio_model_test']:.4f})")
    won = [score for score in COMPARED if beats[score]]
    print(f"model beats the Gaussian baseline on {len(won)} of "
          f"{len(COMPARED)} scores" + ("" if len(won) == len(COMPARED) else
          " (not on: " + ", ".join(s for s in COMPARED if not beats[s]) + ")"))
    print("wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print("CPU time (s): " + ", ".join(f"{k} {v:.1f}"
                                      for k, v in clock.cpu_timings.items()))
    print(f"outputs (samples.npy, ensemble.nc, metrics.json, overview.png "
          f"and the other figures, checkpoint.pt) in "
          f"{os.path.abspath(args.out)}")
    return report


if __name__ == "__main__":
    main()
