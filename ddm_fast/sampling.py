"""k-diffusion-style sampling functions, with every update as one fused op.

The samplers here keep k-diffusion's calling convention exactly
(``k_diffusion.sampling``): the state ``x`` lives in the exploding form
(x = z/alpha), ``sigmas`` is the decreasing sigma-tilde grid (normally ending
with 0), and ``model(x, sigma, **extra_args)`` returns the denoised x_hat,
with ``sigma`` a per-sample vector (``sigma * s_in``). Code written for
k-diffusion runs unchanged against :func:`sample_euler`,
:func:`sample_euler_ancestral`, :func:`sample_heun` and
:func:`sample_dpmpp_2m`.

What differs is the inside: every element-wise update is a single
:func:`ddm_fast.ops.affine` call whose per-sample coefficients are computed
here, in float64, on vectors of length B (docs/math.md,
"The coefficient algebra"). The coefficient functions
(:func:`euler_coefficients`, :func:`heun_coefficients`,
:func:`dpmpp_2m_coefficients`) are public: they take per-sample half
log-SNRs lambda = -log(sigma_tilde) = gamma/2, so members of one batch may
sit at different noise levels, and they are shared with the module samplers
of :mod:`ddm_fast.sampler`. A member whose next level is sigma_tilde = 0
(lambda = +inf) is recognised per sample with ``torch.where``: no step reads
a tensor value on the host, so a whole loop can be captured as a CUDA graph.

Extras beyond k-diffusion (keyword-only, defaults keep its behaviour):
``seed`` and ``member_offset`` for the counter-based noise (docs/math.md,
"Counter-based noise"; noise of
step i is stream ``noise_seed(seed, i + 1)`` at offset ``member_offset *
numel_per_sample``, so an ensemble member's noise does not depend on how the
ensemble is batched) and ``mask`` (masked positions of every state are 0).
Sigmas may also be given per sample, shape (n + 1, B).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from tqdm.auto import trange

from . import ops
from ._validation import (check_float_tensor, check_mask, check_positive_int,
                          check_seed)
from .ops import coefficient_dtype
from .seeds import derive_seed, draw_seed

__all__ = [
    "noise_seed", "draw_seed",
    "append_dims", "append_zero", "to_d", "get_ancestral_step",
    "get_sigmas_karras",
    "euler_coefficients", "heun_coefficients", "dpmpp_2m_coefficients",
    "churn_coefficients",
    "sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpmpp_2m",
]

MAX_CHURN = math.sqrt(2.) - 1.  # Karras et al. (2022), Alg. 2: gamma_i cap

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


# ----------------------------------------------- per-sample coefficients
# All take half log-SNRs lambda = -log(sigma_tilde) = gamma/2 as float64
# vectors of length B and return (B, K) coefficients of the exploding-form
# update over the inputs named in their docstrings. lambda_next = +inf is
# the step onto sigma_tilde = 0, handled per sample.

def euler_coefficients(lam: torch.Tensor, lam_next: torch.Tensor
                       ) -> torch.Tensor:
    """Euler step of the probability-flow ODE over (x, denoised):
    x_next = rho x + (1 - rho) denoised, rho = sigma_next / sigma. Onto
    sigma_next = 0 it returns the denoised state."""
    delta = lam - lam_next  # <= 0
    return torch.stack((torch.exp(delta), -torch.expm1(delta)), dim=1)


def heun_coefficients(lam: torch.Tensor, lam_next: torch.Tensor
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Heun step (Karras et al. 2022, Alg. 2, lines 5-8).

    Returns ``(predictor, corrector)``: the Euler predictor
    x_2 = predictor . (x, denoised) and the trapezoidal corrector
    x_next = corrector . (x, denoised, denoised_2), denoised_2 the denoiser at
    (x_2, sigma_next). Members stepping onto sigma_next = 0 get the plain
    Euler step (corrector (0, 1, 0)); their denoised_2 is not used.
    """
    final = torch.isposinf(lam_next)
    lam_next_safe = torch.where(final, lam, lam_next)  # keeps 1/rho finite
    predictor = euler_coefficients(lam, lam_next_safe)
    zeros = torch.zeros_like(lam)
    ones = torch.ones_like(lam)
    x = torch.stack((ones, zeros, zeros), dim=1)
    denoised = torch.stack((zeros, ones, zeros), dim=1)
    denoised_2 = torch.stack((zeros, zeros, ones), dim=1)
    x_2 = predictor[:, :1] * x + predictor[:, 1:] * denoised
    # dt / sigma and dt / sigma_next with dt = sigma_next - sigma
    dt_over_sigma = torch.expm1(lam - lam_next_safe)[:, None]
    dt_over_sigma_next = -torch.expm1(lam_next_safe - lam)[:, None]
    corrector = (x + 0.5 * dt_over_sigma * (x - denoised)
                 + 0.5 * dt_over_sigma_next * (x_2 - denoised_2))
    euler = torch.cat((euler_coefficients(lam, lam_next), zeros[:, None]), 1)
    corrector = torch.where(final[:, None], euler, corrector)
    return predictor, corrector


def dpmpp_2m_coefficients(lam: torch.Tensor, lam_next: torch.Tensor,
                          lam_prev: Optional[torch.Tensor] = None
                          ) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022) over (x, denoised[, denoised_prev]).

    x_next = (sigma_next/sigma) x - expm1(-h) D with h = lam_next - lam;
    D = denoised without a previous step (``lam_prev`` None: 2 columns),
    else D = (1 + 1/(2r)) denoised - 1/(2r) denoised_prev with
    r = (lam - lam_prev) / h (3 columns). Onto sigma_next = 0, D = denoised.
    """
    h = lam_next - lam
    ratio = torch.exp(-h)
    weight = -torch.expm1(-h)
    if lam_prev is None:
        return torch.stack((ratio, weight), dim=1)
    final = torch.isposinf(lam_next)
    h_safe = torch.where(final, torch.ones_like(h), h)
    half_inv_r = h_safe / (2 * (lam - lam_prev))
    zeros = torch.zeros_like(h)
    second = torch.stack((ratio, weight * (1 + half_inv_r),
                          -weight * half_inv_r), dim=1)
    first = torch.stack((ratio, weight, zeros), dim=1)
    return torch.where(final[:, None], first, second)


def churn_coefficients(sigma: torch.Tensor, churn: float, s_tmin: float,
                       s_tmax: float, s_noise: float
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Karras et al. (2022), Alg. 2, lines 4-6, per sample.

    ``churn`` is gamma_i = min(S_churn / N, sqrt(2) - 1), applied to members
    with S_tmin <= sigma <= S_tmax. Returns (sigma_hat, noise_std) with
    sigma_hat = (1 + gamma) sigma and x_hat = x + noise_std * xi,
    noise_std = S_noise sqrt(sigma_hat^2 - sigma^2)."""
    in_window = (sigma >= s_tmin) & (sigma <= s_tmax)
    gamma = torch.where(in_window, torch.full_like(sigma, churn),
                        torch.zeros_like(sigma))
    sigma_hat = sigma * (1 + gamma)
    noise_std = s_noise * sigma * torch.sqrt(gamma * (2 + gamma))
    return sigma_hat, noise_std


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


class _Grid:
    """Per-sample views of a sigma grid: the sigma handed to the model (in
    the grid's dtype) and lambda = -log(sigma) in float64 for coefficients."""

    def __init__(self, sigmas: torch.Tensor, batch: int, device):
        self.sigmas = sigmas.to(device)
        self.batch = batch
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.lams = -torch.log(self.sigmas.to(dtype))

    def __len__(self):
        return self.sigmas.shape[0]

    def _rows(self, values, i):
        row = values[i]
        return row.expand(self.batch) if row.ndim == 0 else row

    def sigma(self, i):
        return self._rows(self.sigmas, i)

    def lam(self, i):
        return self._rows(self.lams, i)


def _known_zero(sigma: torch.Tensor) -> bool:
    """True only if ``sigma`` is known, without a device sync, to be all 0:
    it lives on the CPU and is. Used to skip work, never for correctness."""
    return sigma.device.type == "cpu" and bool((sigma == 0).all())


def _coeffs(columns: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return columns.to(coefficient_dtype(like))


def _model_sigma(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # k-diffusion hands the model sigma * s_in, with s_in = x.new_ones([B])
    return sigma.to(x.dtype) * x.new_ones([x.shape[0]])


def _per_sample_numel(x: torch.Tensor) -> int:
    return x[0].numel() if x.shape[0] > 0 else 0


# ------------------------------------------------------------- samplers
@torch.no_grad()
def _sample_euler_heun(heun, model, x, sigmas, extra_args, callback, disable,
                       s_churn, s_tmin, s_tmax, s_noise, seed, member_offset,
                       mask):
    extra_args = _check_sampler_args(model, x, sigmas, extra_args, callback,
                                     mask, member_offset)
    s_churn = _check_nonneg("s_churn", s_churn)
    s_noise = _check_nonneg("s_noise", s_noise)
    grid = _Grid(sigmas, x.shape[0], x.device)
    n_steps = len(grid) - 1
    churn = min(s_churn / n_steps, MAX_CHURN)
    base_seed = draw_seed(seed) if churn > 0 else None
    offset = member_offset * _per_sample_numel(x)
    for i in trange(n_steps, disable=disable):
        sigma, sigma_next = grid.sigma(i), grid.sigma(i + 1)
        lam_next = grid.lam(i + 1)
        if churn > 0:
            sigma_hat, noise_std = churn_coefficients(
                sigma.to(grid.lams.dtype), churn, s_tmin, s_tmax, s_noise)
            ones = torch.ones_like(noise_std)
            x = ops.affine([x], _coeffs(torch.stack((ones, noise_std), 1), x),
                           mask, noise_seed(base_seed, i + 1), offset)
            lam = -torch.log(sigma_hat)
        else:
            sigma_hat, lam = sigma, grid.lam(i)
        denoised = model(x, _model_sigma(sigma_hat, x), **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": grid.sigmas[i],
                      "sigma_hat": sigma_hat if churn > 0 else grid.sigmas[i],
                      "denoised": denoised})
        if not heun or _known_zero(sigma_next):
            x = ops.affine([x, denoised],
                           _coeffs(euler_coefficients(lam, lam_next), x), mask)
            continue
        predictor, corrector = heun_coefficients(lam, lam_next)
        x_2 = ops.affine([x, denoised], _coeffs(predictor, x), mask)
        # members stepping onto sigma = 0 do not use denoised_2: evaluate
        # them at a valid sigma instead of 0
        sigma_eval = torch.where(sigma_next == 0,
                                 sigma_hat.to(sigma_next.dtype), sigma_next)
        denoised_2 = model(x_2, _model_sigma(sigma_eval, x), **extra_args)
        x = ops.affine([x, denoised, denoised_2], _coeffs(corrector, x), mask)
    return x


def sample_euler(model, x, sigmas, extra_args=None, callback=None,
                 disable=None, s_churn=0., s_tmin=0., s_tmax=float("inf"),
                 s_noise=1., *, seed: Optional[int] = None,
                 member_offset: int = 0, mask=None):
    """Euler sampler of Karras et al. (2022), Alg. 2 without the correction
    (k-diffusion's ``sample_euler``). ``s_churn > 0`` adds noise before
    each step from the counter-based stream of ``seed``."""
    return _sample_euler_heun(False, model, x, sigmas, extra_args, callback,
                              disable, s_churn, s_tmin, s_tmax, s_noise, seed,
                              member_offset, mask)


def sample_heun(model, x, sigmas, extra_args=None, callback=None,
                disable=None, s_churn=0., s_tmin=0., s_tmax=float("inf"),
                s_noise=1., *, seed: Optional[int] = None,
                member_offset: int = 0, mask=None):
    """Heun sampler of Karras et al. (2022), Alg. 2 (k-diffusion's
    ``sample_heun``): Euler, then a trapezoidal correction with a second
    denoiser call; the step onto sigma = 0 is a plain Euler step."""
    return _sample_euler_heun(True, model, x, sigmas, extra_args, callback,
                              disable, s_churn, s_tmin, s_tmax, s_noise, seed,
                              member_offset, mask)


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None,
                           disable=None, eta=1., s_noise=1.,
                           noise_sampler: Optional[Callable] = None, *,
                           seed: Optional[int] = None, member_offset: int = 0,
                           mask=None):
    """Ancestral sampling with Euler steps (k-diffusion's
    ``sample_euler_ancestral``); eta = 1 is DDPM ancestral sampling.

    The noise is counter-based (stream ``noise_seed(seed, i + 1)`` for step
    i) unless a ``noise_sampler(sigma, sigma_next)`` is given; that one is
    called, as in k-diffusion, only on steps with sigma_next > 0 (which reads
    the sigma value: a host sync if ``sigmas`` lives on a GPU).
    """
    extra_args = _check_sampler_args(model, x, sigmas, extra_args, callback,
                                     mask, member_offset)
    eta = _check_nonneg("eta", eta)
    s_noise = _check_nonneg("s_noise", s_noise)
    if noise_sampler is not None and not callable(noise_sampler):
        raise TypeError("noise_sampler must be callable or None, got "
                        f"{type(noise_sampler).__name__}")
    grid = _Grid(sigmas, x.shape[0], x.device)
    base_seed = draw_seed(seed) if eta > 0 and noise_sampler is None else None
    offset = member_offset * _per_sample_numel(x)
    for i in trange(len(grid) - 1, disable=disable):
        sigma = grid.sigma(i)
        denoised = model(x, _model_sigma(sigma, x), **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": grid.sigmas[i],
                      "sigma_hat": grid.sigmas[i], "denoised": denoised})
        sigma_f = sigma.to(grid.lams.dtype)
        sigma_down, sigma_up = get_ancestral_step(
            sigma_f, grid.sigma(i + 1).to(grid.lams.dtype), eta=eta)
        lam_down = -torch.log(sigma_down)
        columns = [euler_coefficients(grid.lam(i), lam_down)]
        inputs = [x, denoised]
        step_seed = None
        if eta > 0 and noise_sampler is None:
            columns.append((s_noise * sigma_up)[:, None])
            step_seed = noise_seed(base_seed, i + 1)
        elif eta > 0 and bool((grid.sigmas[i + 1] > 0).any()):
            inputs.append(noise_sampler(grid.sigmas[i], grid.sigmas[i + 1]))
            columns.append((s_noise * sigma_up)[:, None])
        x = ops.affine(inputs, _coeffs(torch.cat(columns, 1), x), mask,
                       step_seed, offset)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None,
                    disable=None, *, mask=None):
    """DPM-Solver++(2M) (Lu et al. 2022; k-diffusion's ``sample_dpmpp_2m``).
    Each step is one fused combination of (x, denoised, denoised_prev)."""
    extra_args = _check_sampler_args(model, x, sigmas, extra_args, callback,
                                     mask, 0)
    grid = _Grid(sigmas, x.shape[0], x.device)
    denoised_prev, lam_prev = None, None
    for i in trange(len(grid) - 1, disable=disable):
        denoised = model(x, _model_sigma(grid.sigma(i), x), **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": grid.sigmas[i],
                      "sigma_hat": grid.sigmas[i], "denoised": denoised})
        lam, lam_next = grid.lam(i), grid.lam(i + 1)
        inputs = [x, denoised] if denoised_prev is None else \
            [x, denoised, denoised_prev]
        coeffs = dpmpp_2m_coefficients(lam, lam_next, lam_prev)
        x = ops.affine(inputs, _coeffs(coeffs, x), mask)
        denoised_prev, lam_prev = denoised, lam
    return x
