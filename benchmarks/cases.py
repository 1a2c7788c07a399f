"""The benchmark cases: each one piece of a diffusion training or sampling
step, written as every implementation.

Implementations (``Case.impls``):

- ``eager``: the PyTorch chain a careful user writes today: in the data's
  dtype (per-sample coefficients cast to it once), the noise drawn with
  ``randn_like`` and kept for the loss, the mask converted once and its
  counts precomputed, gradients reset (never accumulated).
- ``compiled``: that same eager function under ``torch.compile`` (the
  forward part for the cases with a backward: AOTAutograd compiles the
  backward from it).
- ``ddm_fast[<backend>]``: the library on each benchmarked backend.
- ``k-diffusion`` / ``diffusers``: the peers (:mod:`.peers`), on the same
  inputs.

Traffic: :data:`TRAFFIC` is the one table of the bytes each case *must*
move, as passes over a tensor of the workload's shape (reads + writes),
plus the mask once where the case takes one. GB/s = those bytes / the
median time. The whole-step cases (``train_step``, ``heun_step``) run a
network, so no byte count describes them: time and peak memory only.
"""
from __future__ import annotations

import copy
import importlib.util
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ddm_fast import backends, ops, sampling
from ddm_fast.loss import DiffusionLoss, diffusion_loss
from ddm_fast.parameterization import get_param
from ddm_fast.sampler import DPMSolverPP2MSampler, EulerSampler, HeunSampler
from ddm_fast.scheduler import BinarizedScheduler, CosineScheduler
from ddm_fast.utils import alpha_sigma, normalize_gamma, sample_time

from . import peers
from .timing import Impl
from .workloads import Workload

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 1234

# case -> (tensor reads, tensor writes, what moves). One pass = numel *
# itemsize bytes; the mask (as stored: broadcast or full) is added once to
# the cases marked "+ mask" when the workload has one. None: not
# memory-bound (a network runs), no byte count.
TRAFFIC: Dict[str, Optional[Tuple[int, int, str]]] = {
    "randn": (0, 1, "write the noise"),
    "diffuse": (1, 1, "read x, write z = alpha x + sigma eps (+ mask)"),
    "loss_fwd_bwd": (4, 2, "diffuse: read x, write z; loss: read f, x; "
                           "backward: read f, x, write df (+ mask)"),
    "sampler_step": (3, 1, "read x, x_prev, d; write out; noise generated, "
                           "never read (+ mask)"),
    "masked_mean": (1, 0, "read x (+ mask)"),
    "train_step": None,
    "heun_step": None,
    "sampling_loop": None,
    # peers: per sampler step, trivial denoiser included (one read, one write)
    "kdiff_euler": (3, 2, "denoiser: read x, write D; step: read x, D, write x"),
    "kdiff_heun": (7, 4, "2 denoiser calls; predictor: read x, D, write x2; "
                         "corrector: read x, D, D2, write x"),
    "kdiff_dpmpp_2m": (4, 2, "denoiser: read x, write D; step: read x, D, "
                             "D_prev, write x"),
    "diffusers_euler": (3, 2, "network: read z, write eps; step: read z, eps, "
                              "write z"),
    "diffusers_dpmsolver": (4, 2, "network: read z, write eps; step: read z, "
                                  "eps, x0_prev, write z"),
}
MASKED_TRAFFIC = {"diffuse", "loss_fwd_bwd", "sampler_step", "masked_mean"}

GROUPS = {"randn": "op", "diffuse": "op", "loss_fwd_bwd": "op",
          "sampler_step": "op", "masked_mean": "op",
          "train_step": "step", "heun_step": "step", "sampling_loop": "step",
          "kdiff_euler": "peer", "kdiff_heun": "peer", "kdiff_dpmpp_2m": "peer",
          "diffusers_euler": "peer", "diffusers_dpmsolver": "peer"}

# relative tolerance of the output checks (max |a - b| / max |b|)
CHECK_TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2,
             torch.float16: 1e-2}


class Skip(Exception):
    """This case cannot run here (the reason is printed and recorded)."""


@dataclass
class Case:
    name: str
    impls: Dict[str, Impl]
    baseline: str
    steps: int = 1                  # sampler steps per call (times are per step)
    check: bool = False             # outputs comparable with the baseline's
    convert: Dict[str, Callable] = field(default_factory=dict)
    note: str = ""

    @property
    def group(self) -> str:
        return GROUPS[self.name]


@dataclass
class Context:
    workload: Workload
    dtype: torch.dtype
    device: torch.device
    backends: List[str]
    compile: bool

    def __post_init__(self):
        self.shape = tuple(self.workload.shape)
        self.batch = self.shape[0]
        self.view = (self.batch,) + (1,) * (len(self.shape) - 1)
        self.mask = self.workload.mask(self.device)
        # eager: the mask in the data's dtype, converted once
        self.mask_x = None if self.mask is None else self.mask.to(self.dtype)
        self.dims = tuple(range(1, len(self.shape)))
        # inputs drawn on the device itself (a global field is 2.8 GB)
        self._gen = torch.Generator(device=self.device).manual_seed(0)

    def randn(self, requires_grad=False, masked=False) -> torch.Tensor:
        t = torch.randn(self.shape, generator=self._gen, device=self.device,
                        dtype=torch.float32).to(self.dtype)
        if masked and self.mask is not None:
            t = t * self.mask_x
        return t.requires_grad_(requires_grad)

    def col(self, v: torch.Tensor) -> torch.Tensor:
        """A per-sample vector as a (B, 1, ...) view in the data's dtype."""
        return v.to(self.dtype).reshape(self.view)

    def count(self) -> float:
        if self.mask is None:
            return float(math.prod(self.shape))
        return float(self.mask.expand(self.shape).sum())

    def counts_per_sample(self) -> torch.Tensor:
        if self.mask is None:
            return torch.full((self.batch,), float(math.prod(self.shape[1:])),
                              device=self.device, dtype=torch.float32)
        # counted in float32: a bfloat16 sum of ones stops being exact at 256
        return self.mask.expand(self.shape).sum(self.dims, dtype=torch.float32)


def necessary_bytes(case: str, ctx: Context) -> Optional[int]:
    spec = TRAFFIC[case]
    if spec is None:
        return None
    reads, writes, _ = spec
    item = torch.empty((), dtype=ctx.dtype).element_size()
    total = (reads + writes) * math.prod(ctx.shape) * item
    if case in MASKED_TRAFFIC and ctx.mask is not None:
        total += ctx.mask.numel() * ctx.mask.element_size()
    return total


# ------------------------------------------------------------- helpers
def _on_backend(name: str, fn: Callable) -> Callable:
    def run():
        with backends.use(name):
            return fn()
    return run


def _no_grad(fn: Callable) -> Callable:
    def run():
        with torch.no_grad():
            return fn()
    return run


def _standard(ctx: Context, eager: Callable, fused: Callable,
              compiled: Optional[Callable] = None, grads=(),
              no_grad: bool = False) -> Dict[str, Impl]:
    """eager, compiled (of ``compiled`` or ``eager``), one per backend."""
    wrap = _no_grad if no_grad else (lambda f: f)
    impls = {"eager": Impl(wrap(eager), grads=list(grads))}
    if ctx.compile:
        impls["compiled"] = Impl(wrap(compiled or torch.compile(eager, dynamic=False)),
                                 grads=list(grads))
    for name in ctx.backends:
        impls[f"ddm_fast[{name}]"] = Impl(wrap(_on_backend(name, fused)),
                                          grads=list(grads))
    return impls


def _gamma(ctx: Context) -> torch.Tensor:
    return torch.linspace(-5, 5, ctx.batch, device=ctx.device,
                          dtype=ops.coefficient_dtype(torch.empty((), dtype=ctx.dtype)))


# --------------------------------------------------------------- cases
def case_randn(ctx: Context) -> Case:
    x = ctx.randn()

    def eager():
        return torch.randn_like(x)

    def fused():
        return ops.randn(ctx.shape, SEED, dtype=ctx.dtype, device=ctx.device)

    return Case("randn", _standard(ctx, eager, fused), "eager")


def case_diffuse(ctx: Context) -> Case:
    x = ctx.randn()
    gamma = _gamma(ctx)
    alpha, sigma = (ctx.col(v) for v in alpha_sigma(gamma))
    m = ctx.mask_x

    def eager():
        noise = torch.randn_like(x)
        z = alpha * x + sigma * noise
        return z if m is None else z * m

    def fused():
        return ops.diffuse(x, gamma, SEED, mask=ctx.mask)

    return Case("diffuse", _standard(ctx, eager, fused), "eager")


def case_loss_fwd_bwd(ctx: Context) -> Case:
    """diffuse + the diffusion loss (eps target) + backward to the network
    output f; eager keeps the noise for the loss."""
    x = ctx.randn()
    f = ctx.randn(requires_grad=True)
    gamma = _gamma(ctx)
    alpha, sigma = (ctx.col(v) for v in alpha_sigma(gamma))
    m = ctx.mask_x
    count = ctx.count()

    def forward():
        noise = torch.randn_like(x)
        z = alpha * x + sigma * noise
        err = (f - noise).square()
        if m is not None:
            z, err = z * m, err * m
        return z, err.sum() / count

    def run(fwd):
        def step():
            z, loss = fwd()
            loss.backward()
            return z
        return step

    def fused():
        z = ops.diffuse(x, gamma, SEED, mask=ctx.mask)
        loss, _ = diffusion_loss(f, x, gamma, SEED, mask=ctx.mask)
        loss.backward()
        return z

    compiled = run(torch.compile(forward, dynamic=False)) if ctx.compile else None
    return Case("loss_fwd_bwd", _standard(ctx, run(forward), fused, compiled,
                                          grads=[f]), "eager")


def case_sampler_step(ctx: Context) -> Case:
    """out = c0 x + c1 x_prev + c2 d + c3 xi, masked: a 3-input sampler
    step with fresh noise (ops.affine)."""
    x, x_prev, d = ctx.randn(), ctx.randn(), ctx.randn()
    coeffs = torch.rand((ctx.batch, 4), device=ctx.device,
                        generator=ctx._gen).to(ops.coefficient_dtype(x))
    c = [ctx.col(coeffs[:, k]) for k in range(4)]
    m = ctx.mask_x

    def eager():
        out = c[0] * x + c[1] * x_prev + c[2] * d + c[3] * torch.randn_like(x)
        return out if m is None else out * m

    def fused():
        return ops.affine([x, x_prev, d], coeffs, mask=ctx.mask, seed=SEED)

    return Case("sampler_step", _standard(ctx, eager, fused), "eager")


def case_masked_mean(ctx: Context) -> Case:
    x = ctx.randn()
    m = ctx.mask_x
    counts = ctx.counts_per_sample()

    def eager():
        if m is None:
            return x.mean(ctx.dims)
        return (x * m).sum(ctx.dims) / counts

    def fused():
        return ops.masked_mean(x, ctx.mask, dim=ctx.dims)

    return Case("masked_mean", _standard(ctx, eager, fused), "eager", check=True)


# ----------------------------------------------------------- networks
class GridDenoiser(torch.nn.Module):
    """Stand-in denoiser for gridded fields: a depthwise 3 x 3 convolution
    modulated by the normalised log-SNR (FiLM). Cheap on purpose, so that
    the diffusion ops' share of a whole step stays visible."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1,
                                    groups=channels)
        self.film = torch.nn.Linear(1, 2 * channels)

    def forward(self, z, normalized_gamma, mask=None, **conditioning):
        scale, shift = self.film(normalized_gamma).chunk(2, dim=1)
        return self.conv(z) * (1 + scale[..., None, None]) + shift[..., None, None]


def _l96_module():
    path = os.path.join(REPO_ROOT, "examples", "lorenz96", "network.py")
    if not os.path.exists(path):
        raise Skip(f"the Lorenz-96 network is not here ({path})")
    name = "_bench_l96_network"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        # registered before it runs, like an import: torch.compile looks the
        # network's module up by name when it traces the forward
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def make_network(ctx: Context) -> Tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    if ctx.workload.network == "l96":
        # the Lorenz-96 example's defaults (examples/lorenz96/main.py)
        net = _l96_module().L96Denoiser(channels=32, n_blocks=4, kernel_size=5)
        desc = "L96Denoiser(channels=32, n_blocks=4, kernel_size=5) (examples/lorenz96)"
    else:
        net = GridDenoiser(ctx.shape[1])
        desc = "GridDenoiser: depthwise 3x3 conv + FiLM (benchmarks/cases.py)"
    return net.to(device=ctx.device, dtype=ctx.dtype), desc


def case_train_step(ctx: Context) -> Case:
    """One whole training step: zero_grad, noise, network, loss, backward,
    Adam step. The Lorenz-96 example's objective (binarized scheduler,
    v-parameterization, sigmoid weighting) through ``DiffusionLoss``."""
    net0, desc = make_network(ctx)
    x = ctx.randn(masked=True)
    loss_fn = DiffusionLoss(BinarizedScheduler(gamma_min=-10., gamma_max=10.),
                            param="v", weighting="sigmoid").to(ctx.device)
    scheduler, param, weighting = loss_fn.scheduler, loss_fn.param, loss_fn.weighting
    lo, hi = loss_fn.gamma_range
    m = ctx.mask_x
    count = ctx.count()
    template = torch.empty((ctx.batch,), device=ctx.device,
                           dtype=ops.coefficient_dtype(x))

    def eager_loss(net):
        # per-sample vectors (length B) with the library's helpers, then the
        # tensor chain in the data's dtype, the noise kept for the target
        time = sample_time(template)
        gamma = scheduler(time).reshape(ctx.batch)
        density = scheduler.get_density(gamma).reshape(ctx.batch)
        alpha, sigma = alpha_sigma(gamma)
        a, c = param.target_coefficients(gamma)
        factor = weighting(gamma).reshape(ctx.batch) * param.error_weight(gamma)
        noise = torch.randn_like(x)
        z = ctx.col(alpha) * x + ctx.col(sigma) * noise
        if m is not None:
            z = z * m
        norm_gamma = normalize_gamma(gamma.detach(), lo, hi).reshape(ctx.batch, 1)
        pred = net(z, normalized_gamma=norm_gamma.to(ctx.dtype), mask=ctx.mask)
        err = (pred - (ctx.col(a) * x + ctx.col(c) * noise)).square()
        if m is not None:
            err = err * m
        return (ctx.col(factor / density) * err).sum() / count

    def trainer(loss_of):
        net = copy.deepcopy(net0)
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_of(net)
            loss.backward()
            opt.step()
            return loss.detach()
        return step

    def fused_loss(net):
        return loss_fn(net, x, mask=ctx.mask).loss

    impls = {"eager": Impl(trainer(eager_loss), cudagraph_ok=False)}
    if ctx.compile:
        compiled = torch.compile(eager_loss, dynamic=False)
        impls["compiled"] = Impl(trainer(compiled), cudagraph_ok=False)
    for name in ctx.backends:
        impls[f"ddm_fast[{name}]"] = Impl(_on_backend(name, trainer(fused_loss)),
                                          cudagraph_ok=False)
    return Case("train_step", impls, "eager", note=f"network: {desc}; Adam")


def case_heun_step(ctx: Context) -> Case:
    """One whole Heun step (two network calls, Karras et al. 2022, Alg. 2)
    from log-SNR -2 to 0, v-parameterization: ``HeunSampler.step`` against
    the same step written out in PyTorch."""
    net, desc = make_network(ctx)
    net.eval()
    z0 = ctx.randn(masked=True)
    param = get_param("v")
    sampler = HeunSampler(CosineScheduler(), timesteps=10, denoising_network=net,
                          param=param, pbar=False)
    g_t = torch.full((ctx.batch,), -2.0, dtype=torch.float64, device=ctx.device)
    g_s = torch.full((ctx.batch,), 0.0, dtype=torch.float64, device=ctx.device)
    m = ctx.mask_x

    def network(z, gamma):
        ng = normalize_gamma(gamma, sampler.gamma_min, sampler.gamma_max)
        kwargs = {} if ctx.mask is None else {"mask": ctx.mask}
        return net(z, normalized_gamma=ng.to(ctx.dtype).reshape(ctx.batch, 1), **kwargs)

    def eager():
        # exploding form x = z / alpha, sigma~ = sigma / alpha (k-diffusion)
        alpha_t, sigma_t = alpha_sigma(g_t)
        alpha_s, sigma_s = alpha_sigma(g_s)
        sig_t, sig_s = sigma_t / alpha_t, sigma_s / alpha_s
        p1, q1 = param.denoise_coefficients(g_t)
        p2, q2 = param.denoise_coefficients(g_s)
        col = ctx.col
        f1 = network(z0, g_t)
        x = z0 / col(alpha_t)
        d1 = (x - (col(p1) * z0 + col(q1) * f1)) / col(sig_t)
        dt = col(sig_s - sig_t)
        x2 = x + d1 * dt
        z2 = col(alpha_s) * x2
        if m is not None:
            z2 = z2 * m
        f2 = network(z2, g_s)
        d2 = (x2 - (col(p2) * z2 + col(q2) * f2)) / col(sig_s)
        z_next = col(alpha_s) * (x + 0.5 * (d1 + d2) * dt)
        return z_next if m is None else z_next * m

    def fused():
        return sampler.step(z0, g_t, g_s, ctx.mask)[0]

    impls = _standard(ctx, eager, fused, no_grad=True)
    for impl in impls.values():
        impl.cudagraph_ok = False
    return Case("heun_step", impls, "eager", check=True,
                note=f"network: {desc}")


LOOP_STEPS = 20


def case_sampling_loop(ctx: Context) -> Case:
    """A whole Heun sampling run (20 steps, 39 network calls) with the
    Lorenz-96 example's network: the loop launched step by step (``eager``)
    against the same loop replayed as one CUDA graph (``graph=True``,
    ddm_fast/graphs.py). GPU only; times are per run."""
    if ctx.device.type != "cuda":
        raise Skip("CUDA graphs need a GPU")
    if ctx.workload.network != "l96":
        raise Skip("the sampling loop is measured on the Lorenz-96 workloads")
    net, desc = make_network(ctx)
    net.eval()
    sampler = HeunSampler(CosineScheduler(), timesteps=LOOP_STEPS,
                          denoising_network=net, param="v", pbar=False)
    sampler.to(ctx.device)

    def run(graph):
        def call():
            return sampler.sample(ctx.shape, seed=SEED, graph=graph)
        return call

    impls = {"eager": Impl(_no_grad(run(False)))}
    for name in ctx.backends:
        impls[f"ddm_fast[{name}]"] = Impl(_no_grad(_on_backend(name, run(True))))
    for impl in impls.values():
        impl.cudagraph_ok = False  # the graph case is its own graph
    return Case("sampling_loop", impls, "eager", check=True,
                note=f"eager: the loop launched step by step on the default "
                     f"backend; ddm_fast[b]: the same loop as one CUDA graph "
                     f"replay; network: {desc}")


# --------------------------------------------------------------- peers
N_PEER_STEPS = 4  # steps 2..5 of a 10-step grid: none first, none final


def _kdiff_denoiser(x, sigma):
    """Trivial denoiser (of N(0, 1) data): one read, one write."""
    scale = (1.0 / (1.0 + sigma * sigma)).to(x.dtype)
    return x * scale[(...,) + (None,) * (x.ndim - 1)]


def _kdiff_case(name: str, fn_name: str):
    def build(ctx: Context) -> Case:
        kd = peers.kdiffusion()
        if kd.module is None:
            raise Skip(f"k-diffusion unavailable: {kd.reason}")
        sigmas = sampling.get_sigmas_karras(10, 0.002, 80.0)[2:2 + N_PEER_STEPS + 1]
        sigmas = sigmas.to(ctx.device)  # k-diffusion keeps them on the device
        x0 = ctx.randn() * sigmas[0].to(ctx.dtype)
        peer_fn = getattr(kd.module, fn_name)
        ours = getattr(sampling, fn_name)
        impls = {"k-diffusion": Impl(lambda: peer_fn(_kdiff_denoiser, x0, sigmas,
                                                     disable=True),
                                     cudagraph_ok=False)}
        for b in ctx.backends:
            impls[f"ddm_fast[{b}]"] = Impl(_on_backend(b, lambda: ours(
                _kdiff_denoiser, x0, sigmas, disable=True)), cudagraph_ok=False)
        return Case(name, impls, "k-diffusion", steps=N_PEER_STEPS, check=True,
                    note=f"ddm_fast.sampling.{fn_name} vs k_diffusion.sampling."
                         f"{fn_name} ({kd.how}); unmasked; trivial denoiser")
    return build


def _eps_network(z, normalized_gamma=None, mask=None, **conditioning):
    """Trivial noise-predicting network: one read, one write."""
    return z * 0.5


def _diffusers_case(name: str, cls_name: str, ours_cls):
    def build(ctx: Context) -> Case:
        df = peers.diffusers()
        if df.module is None:
            raise Skip(f"diffusers unavailable: {df.reason}")
        sched = getattr(df.module, cls_name)()
        sched.set_timesteps(10, device=ctx.device)
        first = 2
        timesteps = sched.timesteps[first:first + N_PEER_STEPS]
        sig = sched.sigmas.to(torch.float64).cpu()[first:first + N_PEER_STEPS + 1]
        alpha = 1.0 / torch.sqrt(1.0 + sig * sig)    # VP alpha of each level
        z0 = ctx.randn()
        exploding = cls_name == "EulerDiscreteScheduler"
        # the same state in each library's convention: diffusers' Euler
        # keeps x = z / alpha, its DPM-Solver and ddm_fast keep z
        sample0 = z0 / float(alpha[0]) if exploding else z0

        def setup():
            sched.set_timesteps(10, device=ctx.device)

        def peer():
            x = sample0
            for t in timesteps:
                model_in = sched.scale_model_input(x, t)
                eps = _eps_network(model_in)
                x = sched.step(eps, t, x, return_dict=False)[0]
            return x

        gammas = (-2.0 * torch.log(sig)).to(ctx.device)
        sampler = ours_cls(CosineScheduler(), timesteps=10,
                           denoising_network=_eps_network, param="eps",
                           pbar=False)

        def ours():
            z, prev, g_prev = z0, None, None
            for k in range(N_PEER_STEPS):
                g_t = gammas[k].expand(ctx.batch)
                g_s = gammas[k + 1].expand(ctx.batch)
                if ours_cls is DPMSolverPP2MSampler:
                    z, den = sampler.step(z, g_t, g_s, None, denoised_prev=prev,
                                          gamma_prev=g_prev)
                    prev, g_prev = den, g_t
                else:
                    z, _ = sampler.step(z, g_t, g_s, None)
            return z

        convert = {}
        if exploding:
            a_end = float(alpha[-1])
            convert["diffusers"] = lambda x: x * a_end
        impls = {"diffusers": Impl(peer, setup=setup, cudagraph_ok=False)}
        for b in ctx.backends:
            impls[f"ddm_fast[{b}]"] = Impl(_no_grad(_on_backend(b, ours)),
                                           cudagraph_ok=False)
        return Case(name, impls, "diffusers", steps=N_PEER_STEPS, check=True,
                    convert=convert,
                    note=f"ddm_fast.sampler.{ours_cls.__name__}.step vs diffusers "
                         f"{cls_name}.step (+ scale_model_input) on its own "
                         f"10-step grid; eps network; unmasked")
    return build


CASES: Dict[str, Callable[[Context], Case]] = {
    "randn": case_randn,
    "diffuse": case_diffuse,
    "loss_fwd_bwd": case_loss_fwd_bwd,
    "sampler_step": case_sampler_step,
    "masked_mean": case_masked_mean,
    "train_step": case_train_step,
    "heun_step": case_heun_step,
    "sampling_loop": case_sampling_loop,
    "kdiff_euler": _kdiff_case("kdiff_euler", "sample_euler"),
    "kdiff_heun": _kdiff_case("kdiff_heun", "sample_heun"),
    "kdiff_dpmpp_2m": _kdiff_case("kdiff_dpmpp_2m", "sample_dpmpp_2m"),
    "diffusers_euler": _diffusers_case("diffusers_euler", "EulerDiscreteScheduler",
                                       EulerSampler),
    "diffusers_dpmsolver": _diffusers_case("diffusers_dpmsolver",
                                           "DPMSolverMultistepScheduler",
                                           DPMSolverPP2MSampler),
}
PEER_CASES = [c for c, g in GROUPS.items() if g == "peer"]
assert set(CASES) == set(TRAFFIC) == set(GROUPS)
