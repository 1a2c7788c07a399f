"""k-diffusion-style sampling functions, with every update as one fused op.

The samplers here keep k-diffusion's calling convention exactly
(``k_diffusion.sampling``): the state ``x`` lives in the exploding form
(x = z/alpha), ``sigmas`` is the decreasing sigma-tilde grid (normally ending
with 0), and ``model(x, sigma, **extra_args)`` returns the denoised x_hat,
with ``sigma`` a per-sample vector (``sigma * s_in``). Code written for
k-diffusion runs unchanged against :func:`sample_euler`,
:func:`sample_euler_ancestral`, :func:`sample_heun` and
:func:`sample_dpmpp_2m`.

What differs is the inside: these functions are adapters over the one
implementation of each method, :mod:`ddm_fast.sampler.methods` (shared with
the module samplers): every element-wise update is a single
:func:`ddm_fast.ops.affine` call whose per-sample coefficients are computed
in float64 on vectors of length B (docs/math.md, "The coefficient
algebra"), members of one batch may sit at different noise levels, and a
member whose next level is sigma_tilde = 0 is recognised per sample with
``torch.where``: no step reads a tensor value on the host.

Extras beyond k-diffusion (keyword-only, defaults keep its behaviour):
``seed`` and ``member_offset`` for the counter-based noise (docs/math.md,
"Counter-based noise"; noise of
step i is stream ``noise_seed(seed, i + 1)`` at offset ``member_offset *
numel_per_sample``, so an ensemble member's noise does not depend on how the
ensemble is batched) and ``mask`` (masked positions of every state are 0).
Sigmas may also be given per sample, shape (n + 1, B).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from . import graphs
from ._validation import check_float_tensor, check_mask, check_positive_int
from .denoiser import algebra_dtype
from .sampler import methods
from .seeds import derive_seed, draw_seed

__all__ = [
    "noise_seed", "draw_seed",
    "append_dims", "append_zero", "to_d", "get_ancestral_step",
    "get_sigmas_karras",
    "sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpmpp_2m",
]

MAX_CHURN = methods.MAX_CHURN

# ------------------------------------------------------------------ seeds
def noise_seed(seed: int, stream: int) -> int:
    """Seed of noise stream ``stream`` derived from a base ``seed``:
    ``derive_seed(seed, stream)`` (:mod:`ddm_fast.seeds`). The samplers use
    stream 0 for the prior sample and stream k + 1 for the noise of step k.
    """
    if isinstance(stream, bool) or not isinstance(stream, int) or stream < 0:
        raise ValueError(f"stream must be a non-negative int, got {stream!r}")
    return derive_seed(seed, stream)


# ------------------------------------------------- k-diffusion utilities
def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Append singleton dimensions to ``x`` until it has ``target_dims``."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"x has {x.ndim} dims but target_dims is "
                         f"{target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def append_zero(x: torch.Tensor) -> torch.Tensor:
    """``x`` with a 0 appended along its first dimension."""
    return torch.cat([x, x.new_zeros([1])])


def to_d(x: torch.Tensor, sigma: torch.Tensor,
         denoised: torch.Tensor) -> torch.Tensor:
    """Karras ODE derivative dx/dsigma = (x - denoised) / sigma."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from, sigma_to, eta: float = 1.):
    """(sigma_down, sigma_up) of an ancestral step sigma_from -> sigma_to.

    sigma_up is eta times the DDPM posterior standard deviation, capped at
    sigma_to; sigma_down = sqrt(sigma_to^2 - sigma_up^2). Element-wise on
    tensors (no Python comparison of tensor values)."""
    sigma_from = torch.as_tensor(sigma_from)
    sigma_to = torch.as_tensor(sigma_to)
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    posterior_var = sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) \
        / sigma_from ** 2
    sigma_up = torch.minimum(sigma_to, eta * posterior_var.clamp_min(0).sqrt())
    sigma_down = (sigma_to ** 2 - sigma_up ** 2).clamp_min(0).sqrt()
    return sigma_down, sigma_up


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float,
                      rho: float = 7., device="cpu") -> torch.Tensor:
    """Karras et al. (2022) rho-schedule of ``n`` sigmas, then a final 0."""
    check_positive_int("n", n)
    if not 0 < float(sigma_min) < float(sigma_max):
        raise ValueError("expected 0 < sigma_min < sigma_max, got "
                         f"sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not float(rho) > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas).to(device)


# --------------------------------------------------------------- helpers
def _check_sampler_args(model, x, sigmas, extra_args, callback, mask,
                        member_offset):
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    check_float_tensor("x", x, min_ndim=1)
    check_float_tensor("sigmas", sigmas, min_ndim=1)
    if sigmas.ndim > 2 or sigmas.shape[0] < 2 or (
            sigmas.ndim == 2 and sigmas.shape[1] != x.shape[0]):
        raise ValueError(
            "sigmas must have shape (n + 1,) or (n + 1, batch) with n >= 1 "
            f"and batch = x.shape[0] = {x.shape[0]}; got {tuple(sigmas.shape)}")
    if extra_args is None:
        extra_args = {}
    elif not isinstance(extra_args, dict):
        raise TypeError("extra_args must be a dict or None, got "
                        f"{type(extra_args).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable or None, got "
                        f"{type(callback).__name__}")
    check_mask(mask, x, like_name="x")
    if isinstance(member_offset, bool) or not isinstance(member_offset, int) \
            or member_offset < 0:
        raise ValueError("member_offset must be a non-negative int, got "
                         f"{member_offset!r}")
    return extra_args


def _check_nonneg(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _ends_at_zero(sigmas: torch.Tensor) -> bool:
    """The grid's last level is known to be 0: only read for a CPU grid (a
    device grid is handled per sample, never read on the host)."""
    return sigmas.device.type == "cpu" and bool((sigmas[-1] == 0).all())


def _levels(sigmas: torch.Tensor, x: torch.Tensor,
            ends_at_zero: Optional[bool] = None) -> methods.Levels:
    """Levels of a k-diffusion sigma grid: lambda = -log(sigma) in the
    algebra dtype, the user's sigmas kept for the model."""
    if ends_at_zero is None:
        ends_at_zero = _ends_at_zero(sigmas)
    sigmas = sigmas.to(x.device)
    lams = -torch.log(sigmas.to(algebra_dtype(x.device)))
    return methods.Levels(lams, x.shape[0], sigmas, ends_at_zero)


def _run(loop, model, x, sigmas, extra_args, mask, seed, offset, graph,
         callback):
    """Run ``loop(x, levels, mask, extra_args, noise, report)``: eagerly,
    or (``graph=True``, CUDA) as one CUDA-graph replay with x, the grid,
    the mask and the tensor ``extra_args`` as the graph's static inputs and
    the step seeds in its seed table (ddm_fast/graphs.py). ``seed`` None:
    the loop draws no counter-based noise."""
    if not isinstance(graph, bool):
        raise TypeError(f"graph must be a bool, got {type(graph).__name__}")
    ends_at_zero = _ends_at_zero(sigmas)
    if not graph:
        levels = _levels(sigmas, x, ends_at_zero)
        noise = methods.NoiseStreams(seed, offset) if seed is not None else None
        return loop(x, levels, mask, extra_args, noise,
                    _reporter(callback, levels))
    graphs.check_no_callback(callback)
    tensors = {"x": x, "sigmas": sigmas.to(x.device)}
    if mask is not None:
        tensors["mask"] = mask
    fixed, fixed_key = graphs.split_keywords("extra:", extra_args, tensors)
    n_steps = sigmas.shape[0] - 1
    key = (loop.key, ends_at_zero, offset, seed is not None, fixed_key)

    def captured(static, seed_table):
        extra = graphs.join_keywords("extra:", static, fixed)
        noise = methods.NoiseStreams(None, offset, seed_table) \
            if seed is not None else None
        levels = _levels(static["sigmas"], static["x"], ends_at_zero)
        return loop(static["x"], levels, static.get("mask"), extra, noise,
                    None)

    seeds = methods.NoiseStreams.table_seeds(seed, n_steps) \
        if seed is not None else []
    return graphs.run_graphed(model, key, captured, tensors, seeds)


def _per_sample_numel(x: torch.Tensor) -> int:
    return x[0].numel() if x.shape[0] > 0 else 0


def _reporter(callback, levels: methods.Levels):
    """k-diffusion's callback dict from a loop's report: ``sigma`` is the
    grid's value (per-sample row for a per-sample grid), ``sigma_hat`` the
    churned level's per-sample values (the grid's without churn)."""
    if callback is None:
        return None

    def report(i, state, t, t_hat, s, denoised, new):
        sigma = levels.sigmas[i]
        callback({"x": state, "i": i, "sigma": sigma,
                  "sigma_hat": sigma if t_hat is t else t_hat.model_sigma(),
                  "denoised": denoised})
    return report


# ------------------------------------------------------------- samplers
def _sample_euler_heun(heun, model, x, sigmas, extra_args, callback, disable,
                       s_churn, s_tmin, s_tmax, s_noise, seed, member_offset,
                       mask, graph):
    extra_args = _check_sampler_args(model, x, sigmas, extra_args, callback,
                                     mask, member_offset)
    s_churn = _check_nonneg("s_churn", s_churn)
    s_noise = _check_nonneg("s_noise", s_noise)
    s_tmin = _check_nonneg("s_tmin", s_tmin)
    s_tmax = _check_nonneg("s_tmax", s_tmax)
    churn = min(s_churn / (sigmas.shape[0] - 1), MAX_CHURN)

    def loop(x, levels, mask, extra_args, noise, report):
        return methods.euler_heun_loop(
            methods.ModelFrame(model, extra_args), x, levels, heun=heun,
            churn=churn, s_tmin=s_tmin, s_tmax=s_tmax,
            s_noise=s_noise, noise=noise, mask=mask, report=report,
            disable=disable)

    loop.key = ("heun" if heun else "euler", churn, s_tmin, s_tmax, s_noise)
    with torch.no_grad():
        return _run(loop, model, x, sigmas, extra_args, mask,
                    draw_seed(seed) if churn > 0 else None,
                    member_offset * _per_sample_numel(x), graph, callback)


def sample_euler(model, x, sigmas, extra_args=None, callback=None,
                 disable=None, s_churn=0., s_tmin=0., s_tmax=float("inf"),
                 s_noise=1., *, seed: Optional[int] = None,
                 member_offset: int = 0, mask=None, graph: bool = False):
    """Euler sampler of Karras et al. (2022), Alg. 2 without the correction
    (k-diffusion's ``sample_euler``). ``s_churn > 0`` adds noise before
    each step from the counter-based stream of ``seed``."""
    return _sample_euler_heun(False, model, x, sigmas, extra_args, callback,
                              disable, s_churn, s_tmin, s_tmax, s_noise, seed,
                              member_offset, mask, graph)


def sample_heun(model, x, sigmas, extra_args=None, callback=None,
                disable=None, s_churn=0., s_tmin=0., s_tmax=float("inf"),
                s_noise=1., *, seed: Optional[int] = None,
                member_offset: int = 0, mask=None, graph: bool = False):
    """Heun sampler of Karras et al. (2022), Alg. 2 (k-diffusion's
    ``sample_heun``): Euler, then a trapezoidal correction with a second
    denoiser call; the step onto sigma = 0 is a plain Euler step."""
    return _sample_euler_heun(True, model, x, sigmas, extra_args, callback,
                              disable, s_churn, s_tmin, s_tmax, s_noise, seed,
                              member_offset, mask, graph)


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None,
                           disable=None, eta=1., s_noise=1.,
                           noise_sampler: Optional[Callable] = None, *,
                           seed: Optional[int] = None, member_offset: int = 0,
                           mask=None, graph: bool = False):
    """Ancestral sampling with Euler steps (k-diffusion's
    ``sample_euler_ancestral``); eta = 1 is DDPM ancestral sampling.

    The noise is counter-based (stream ``noise_seed(seed, i + 1)`` for step
    i) unless a ``noise_sampler(sigma, sigma_next)`` is given; that one is
    called, as in k-diffusion, on every step not known to end at sigma = 0.
    """
    extra_args = _check_sampler_args(model, x, sigmas, extra_args, callback,
                                     mask, member_offset)
    eta = _check_nonneg("eta", eta)
    s_noise = _check_nonneg("s_noise", s_noise)
    if noise_sampler is not None and not callable(noise_sampler):
        raise TypeError("noise_sampler must be callable or None, got "
                        f"{type(noise_sampler).__name__}")
    if graph and noise_sampler is not None:
        raise ValueError("noise_sampler cannot be combined with graph=True "
                         "(its noise would be frozen at capture); leave it "
                         "None for the counter-based noise of seed")

    def loop(x, levels, mask, extra_args, noise, report):
        return methods.ancestral_loop(
            methods.ModelFrame(model, extra_args), x, levels, eta=eta,
            s_noise=s_noise, noise=noise, noise_sampler=noise_sampler,
            mask=mask, report=report, disable=disable)

    loop.key = ("euler_ancestral", eta, s_noise)
    with_noise = eta > 0 and noise_sampler is None
    return _run(loop, model, x, sigmas, extra_args, mask,
                draw_seed(seed) if with_noise else None,
                member_offset * _per_sample_numel(x), graph, callback)


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None,
                    disable=None, *, mask=None, graph: bool = False):
    """DPM-Solver++(2M) (Lu et al. 2022; k-diffusion's ``sample_dpmpp_2m``).
    Each step is one fused combination of (x, denoised, denoised_prev)."""
    extra_args = _check_sampler_args(model, x, sigmas, extra_args, callback,
                                     mask, 0)

    def loop(x, levels, mask, extra_args, noise, report):
        return methods.dpmpp_2m_loop(
            methods.ModelFrame(model, extra_args), x, levels, mask=mask,
            report=report, disable=disable)

    loop.key = ("dpmpp_2m",)
    return _run(loop, model, x, sigmas, extra_args, mask, None, 0, graph,
                callback)
