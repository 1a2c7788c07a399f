"""The one implementation of every sampling method: its steps and its loop.

Each method (Euler with churn, Heun, the ancestral/DDIM family, DPM-Solver++
(2M)) is written once, here, as steps on per-sample noise levels and one loop
(docs/math.md, "Sampler steps"). The module samplers of
:mod:`ddm_fast.sampler` and the k-diffusion-style functions of
:mod:`ddm_fast.sampling` are adapters that choose a :class:`Frame`:

* :class:`DenoiserFrame`: the state is the variance-preserving z = alpha x_e
  and the network output f gives x_hat = p z + q f (a :class:`Denoiser`);
* :class:`ModelFrame`: the state is the exploding x_e and a k-diffusion
  ``model(x, sigma)`` returns x_hat itself.

A step is written in the exploding form x_e = state / scale on
:class:`~ddm_fast.sampler.algebra.Combo` objects and evaluated as one fused op
per combination. Noise levels are half log-SNRs lambda = gamma / 2 =
-log(sigma_tilde) in float64 (float32 on MPS), whatever the state's dtype;
lambda = +inf is the level sigma_tilde = 0, handled per sample with
``torch.where`` (no step reads a tensor value on the host).

Noise (docs/math.md, "Seeds and streams"): step i of a loop draws stream
``derive_seed(seed, i + 1)`` at offset ``member_offset * numel_per_sample``
(:class:`NoiseStreams`, the one place a step's noise is named).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from tqdm.auto import trange

from ..denoiser import Denoiser
from ..seeds import derive_seed
from .algebra import Combo, apply

__all__ = ["Level", "Levels", "select", "vp_levels", "Estimate", "Frame",
           "DenoiserFrame", "ModelFrame", "NoiseStreams", "MAX_CHURN",
           "euler_step", "heun_step", "churn_step", "ancestral_step",
           "dpmpp_2m_step", "euler_heun_loop", "ancestral_loop",
           "dpmpp_2m_loop"]

MAX_CHURN = math.sqrt(2.) - 1.  # Karras et al. (2022), Alg. 2: gamma_i cap


# ------------------------------------------------------------------ levels
class Level(NamedTuple):
    """A per-sample noise level: ``lam`` (B,) = -log sigma_tilde in the
    algebra dtype; ``sigma`` (B,) the value a k-diffusion model is handed
    (the user's grid value, in its dtype), None: exp(-lam)."""
    lam: torch.Tensor
    sigma: Optional[torch.Tensor] = None

    def model_sigma(self) -> torch.Tensor:
        return torch.exp(-self.lam) if self.sigma is None else self.sigma


def select(condition: torch.Tensor, a: Level, b: Level) -> Level:
    """Per sample: level ``a`` where ``condition``, else ``b``."""
    sigma = None
    if a.sigma is not None or b.sigma is not None:
        sa, sb = a.model_sigma(), b.model_sigma()
        sigma = torch.where(condition, sa.to(sb.dtype), sb)
    return Level(torch.where(condition, a.lam, b.lam), sigma)


class Levels:
    """The grid of a loop: level i for i = 0..n. ``lams`` (n + 1,) or
    (n + 1, B) in the algebra dtype, ``sigmas`` the model-facing values of
    the same shape (or None). ``ends_at_zero``: the last level is known in
    Python to be sigma_tilde = 0 for every member (the last step is then a
    plain Euler step, with no second network call and no noise)."""

    def __init__(self, lams: torch.Tensor, batch: int,
                 sigmas: Optional[torch.Tensor] = None,
                 ends_at_zero: bool = False):
        self.lams, self.sigmas, self.batch = lams, sigmas, batch
        self.ends_at_zero = ends_at_zero

    def __len__(self) -> int:
        return self.lams.shape[0]

    @property
    def n_steps(self) -> int:
        return len(self) - 1

    def _row(self, values, i):
        row = values[i]
        return row.expand(self.batch) if row.ndim == 0 else row

    def __getitem__(self, i: int) -> Level:
        return Level(self._row(self.lams, i),
                     None if self.sigmas is None else self._row(self.sigmas, i))

    def is_final(self, i: int) -> bool:
        """Step i goes onto sigma_tilde = 0 for every member."""
        return self.ends_at_zero and i == self.n_steps - 1


# ------------------------------------------------------------------ frames
class Estimate(NamedTuple):
    """A network evaluation: output ``f`` with x_hat = p * state + q * f."""
    f: torch.Tensor
    p: Any
    q: Any


class Frame:
    """How the state, the network output and x_hat relate (see module)."""
    #: x_hat is the network output itself (p = 0, q = 1)
    returns_denoised = False

    def scale(self, lam: torch.Tensor):
        """state = scale * x_e at level lam."""
        raise NotImplementedError

    def evaluate(self, state: torch.Tensor, level: Level) -> Estimate:
        raise NotImplementedError


class DenoiserFrame(Frame):
    """The variance-preserving state z through a :class:`Denoiser`."""

    def __init__(self, denoiser: Denoiser, mask=None,
                 conditioning: Optional[Dict[str, Any]] = None):
        self.denoiser, self.mask = denoiser, mask
        self.conditioning = conditioning or {}

    def scale(self, lam):
        # alpha = sqrt(sigmoid(gamma)), as alpha_sigma computes it
        return torch.exp(0.5 * F.logsigmoid(2 * lam))

    def evaluate(self, state, level):
        return Estimate(*self.denoiser.estimate(state, 2 * level.lam,
                                                self.mask,
                                                **self.conditioning))


class ModelFrame(Frame):
    """The exploding state x_e and a k-diffusion model returning x_hat,
    called as ``model(x, sigma * s_in, **extra_args)``."""
    returns_denoised = True

    def __init__(self, model: Callable, extra_args: Dict[str, Any]):
        self.model, self.extra_args = model, extra_args

    def scale(self, lam):
        return 1.

    def evaluate(self, state, level):
        sigma = level.model_sigma().to(state.dtype) * \
            state.new_ones([state.shape[0]])
        return Estimate(self.model(state, sigma, **self.extra_args), 0., 1.)


class NoiseStreams:
    """The noise of step i: stream ``derive_seed(seed, i + 1)`` at
    ``offset`` (stream 0 is the prior's). The one place a step's noise is
    named. With ``seed_table`` (a device int64 tensor whose element k holds
    stream k's seed, :mod:`ddm_fast.graphs`) a step's seed is the seed word
    ``seed_table[i + 1]``, read by the kernel when it runs: the same noise,
    and a captured CUDA graph replays with whatever seeds the table holds."""

    def __init__(self, seed: Optional[int], offset: int,
                 seed_table: Optional[torch.Tensor] = None):
        self.seed, self.offset, self.seed_table = seed, offset, seed_table

    def for_step(self, i: int) -> Tuple[Any, int]:
        if self.seed_table is not None:
            return self.seed_table[i + 1:i + 2], self.offset
        return derive_seed(self.seed, i + 1), self.offset

    @staticmethod
    def table_seeds(seed: int, n_steps: int):
        """The seeds a seed table holds for ``n_steps`` steps: element k is
        stream k's (k = 0 the prior's, unused by the loops)."""
        return [derive_seed(seed, k) for k in range(n_steps + 1)]


def _finish(frame: Frame, combo: Combo, inputs, mask, *, want_denoised,
            x_hat: Combo, f: torch.Tensor, noise=None):
    """Evaluate a step's result (and x_hat when wanted) in one fused op."""
    seed, offset = noise if noise is not None else (None, 0)
    if want_denoised and not frame.returns_denoised:
        return apply(combo, inputs, mask, noise_seed=seed,
                     noise_offset=offset, also=x_hat)
    out = apply(combo, inputs, mask, noise_seed=seed, noise_offset=offset)
    return out, (f if want_denoised else None)


# ------------------------------------------------------------------- steps
def euler_step(frame: Frame, state, t: Level, s: Level, mask=None, *,
               want_denoised: bool = False):
    """x_e,s = x_hat + (sigma_s / sigma_t)(x_e,t - x_hat): the Euler step of
    the probability-flow ODE (docs/math.md, "Euler"); onto sigma_s = 0 it
    is x_hat. Returns (state_s, x_hat or None)."""
    est = frame.evaluate(state, t)
    z, f = Combo.inputs(2, like=t.lam)
    x_e = z / frame.scale(t.lam)
    x_hat = est.p * z + est.q * f
    rho = torch.exp(t.lam - s.lam)              # sigma_s / sigma_t
    one_minus_rho = -torch.expm1(t.lam - s.lam)
    x_e_s = rho * x_e + one_minus_rho * x_hat
    return _finish(frame, frame.scale(s.lam) * x_e_s, [state, est.f], mask,
                   want_denoised=want_denoised, x_hat=x_hat, f=est.f)


def heun_step(frame: Frame, state, t: Level, s: Level, mask=None, *,
              final: bool = False, want_denoised: bool = False):
    """Heun's step (Karras et al. 2022, Alg. 2, lines 5-8): the Euler
    predictor x_e,2 and the trapezoidal corrector
    x_e,s = x_e + dt/2 (d_1 + d_2), d_1 = (x_e - x_hat_1)/sigma_t,
    d_2 = (x_e,2 - x_hat_2)/sigma_s, dt = sigma_s - sigma_t. Members going
    onto sigma_s = 0 take the Euler step (their x_hat_2 is evaluated at
    sigma_t and not used); ``final``: all of them do (no second call)."""
    if final:
        return euler_step(frame, state, t, s, mask,
                          want_denoised=want_denoised)
    est_1 = frame.evaluate(state, t)
    z, f_1, f_2 = Combo.inputs(3, like=t.lam)
    x_e = z / frame.scale(t.lam)
    x_hat_1 = est_1.p * z + est_1.q * f_1
    onto_zero = torch.isposinf(s.lam)
    e = select(onto_zero, t, s)                 # where x_hat_2 is evaluated
    dt_over_sigma_t = torch.expm1(t.lam - e.lam)
    dt_over_sigma_e = -torch.expm1(e.lam - t.lam)
    x_e_2 = x_e + dt_over_sigma_t * (x_e - x_hat_1)       # Euler predictor
    state_2 = frame.scale(e.lam) * x_e_2
    state_2_tensor, x_hat_1_tensor = apply(state_2, [state, est_1.f], mask,
                                           also=x_hat_1)
    if frame.returns_denoised:
        x_hat_1_tensor = est_1.f
    est_2 = frame.evaluate(state_2_tensor, e)
    x_hat_2 = est_2.p * state_2 + est_2.q * f_2
    heun = x_e + 0.5 * dt_over_sigma_t * (x_e - x_hat_1) \
        + 0.5 * dt_over_sigma_e * (x_e_2 - x_hat_2)
    euler = torch.exp(t.lam - s.lam) * x_e \
        - torch.expm1(t.lam - s.lam) * x_hat_1
    x_e_s = Combo.where(onto_zero, euler, heun)
    out = apply(frame.scale(s.lam) * x_e_s, [state, est_1.f, est_2.f], mask)
    return out, (x_hat_1_tensor if want_denoised else None)


def churn_step(frame: Frame, state, t: Level, churn: float, s_tmin: float,
               s_tmax: float, s_noise: float, noise: Tuple[int, int],
               mask=None) -> Tuple[torch.Tensor, Level]:
    """Karras et al. (2022), Alg. 2, lines 4-6: members with
    S_tmin <= sigma_t <= S_tmax go up to sigma_hat = (1 + churn) sigma_t,
    x_e,hat = x_e + S_noise sqrt(sigma_hat^2 - sigma_t^2) xi. Returns the
    state and the level sigma_hat."""
    sigma = t.model_sigma().to(t.lam.dtype)
    in_window = (sigma >= s_tmin) & (sigma <= s_tmax)
    factor = torch.where(in_window, torch.full_like(sigma, churn),
                         torch.zeros_like(sigma))
    sigma_hat = sigma * (1 + factor)
    noise_std = s_noise * sigma * torch.sqrt(factor * (2 + factor))
    churned = Level(-torch.log(sigma_hat))
    z = Combo.inputs(1, like=t.lam)[0]
    xi = Combo.noise(like=z)
    x_e_hat = z / frame.scale(t.lam) + noise_std * xi
    seed, offset = noise
    out = apply(frame.scale(churned.lam) * x_e_hat, [state], mask,
                noise_seed=seed, noise_offset=offset)
    return out, churned


def ancestral_step(frame: Frame, state, t: Level, s: Level, mask=None, *,
                   eta: float = 1., s_noise: float = 1.,
                   noise: Optional[Tuple[int, int]] = None,
                   noise_tensor: Optional[torch.Tensor] = None,
                   want_denoised: bool = False):
    """DDIM(eta) = ancestral sampling (docs/math.md, "DDIM and DDPM"):
    x_e,s = x_hat + (sigma_down / sigma_t)(x_e - x_hat) + S_noise sigma_up xi
    with sigma_up = min(sigma_s, eta sigma_s sqrt(1 - sigma_s^2/sigma_t^2))
    and sigma_down = sqrt(sigma_s^2 - sigma_up^2); eta = 0 is the Euler
    (deterministic DDIM) step, eta = 1 DDPM. A step towards more noise
    (sigma_s > sigma_t) has no posterior noise: it is the ODE step. The
    noise is the stream ``noise`` = (seed, offset), or ``noise_tensor``."""
    est = frame.evaluate(state, t)
    inputs = [state, est.f] + ([noise_tensor] if noise_tensor is not None
                               else [])
    z, f, given_noise = Combo.inputs(3, like=t.lam)
    x_e = z / frame.scale(t.lam)
    x_hat = est.p * z + est.q * f
    variance_ratio = torch.exp(2 * (t.lam - s.lam)).clamp(max=1.)
    up = torch.clamp(eta * torch.sqrt(1 - variance_ratio), max=1.)
    down_sq = ((1 - eta * eta) + eta * eta * variance_ratio).clamp(min=0.)
    log_rho = (t.lam - s.lam) + 0.5 * torch.log(down_sq)  # sigma_down/sigma_t
    x_e_s = torch.exp(log_rho) * x_e - torch.expm1(log_rho) * x_hat
    noise_std = s_noise * torch.exp(-s.lam) * up
    if noise is not None:
        x_e_s = x_e_s + noise_std * Combo.noise(like=z)
    elif noise_tensor is not None:
        x_e_s = x_e_s + noise_std * given_noise
    return _finish(frame, frame.scale(s.lam) * x_e_s, inputs, mask,
                   want_denoised=want_denoised, x_hat=x_hat, f=est.f,
                   noise=noise)


def dpmpp_2m_step(frame: Frame, state, t: Level, s: Level, mask=None, *,
                  previous: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
    """DPM-Solver++(2M) (Lu et al. 2022): x_e,s = (sigma_s/sigma_t) x_e
    - expm1(-h) D, h = lambda_s - lambda_t, D = x_hat without a previous
    step (``previous`` = (x_hat_prev, lambda_prev)) and onto sigma_s = 0,
    else D = (1 + 1/(2r)) x_hat - 1/(2r) x_hat_prev, r = (lambda_t -
    lambda_prev) / h. Returns (state_s, x_hat): pass (x_hat, t.lam) on."""
    est = frame.evaluate(state, t)
    z, f, x_hat_prev = Combo.inputs(3, like=t.lam)
    inputs = [state, est.f]
    x_e = z / frame.scale(t.lam)
    x_hat = est.p * z + est.q * f
    h = s.lam - t.lam
    D = x_hat
    if previous is not None:
        inputs.append(previous[0])
        onto_zero = torch.isposinf(s.lam)
        half_inv_r = torch.where(onto_zero, torch.zeros_like(h),
                                 h / (2 * (t.lam - previous[1])))
        D = (1 + half_inv_r) * x_hat - half_inv_r * x_hat_prev
    x_e_s = torch.exp(-h) * x_e - torch.expm1(-h) * D
    return _finish(frame, frame.scale(s.lam) * x_e_s, inputs, mask,
                   want_denoised=True, x_hat=x_hat, f=est.f)


# ------------------------------------------------------------------- loops
# ``report(i, state, level, level_hat, denoised, new_state)`` is called after
# step i (``state``: the state the network saw first, after any churn).

def _steps(n: int, disable):
    return trange(n, disable=disable, leave=False)


def euler_heun_loop(frame: Frame, state: torch.Tensor, levels: Levels, *,
                    heun: bool, churn: float = 0., s_tmin: float = 0.,
                    s_tmax: float = math.inf, s_noise: float = 1.,
                    noise: Optional[NoiseStreams] = None, mask=None,
                    report: Optional[Callable] = None, disable=None):
    """Euler (``heun=False``) or Heun steps over ``levels``, each preceded
    by churn when ``churn`` > 0 (Karras's gamma_i, noise from ``noise``)."""
    for i in _steps(levels.n_steps, disable):
        t, s = levels[i], levels[i + 1]
        if churn > 0:
            state, t_hat = churn_step(frame, state, t, churn, s_tmin, s_tmax,
                                      s_noise, noise.for_step(i), mask)
        else:
            t_hat = t
        want = report is not None
        if heun:
            new, denoised = heun_step(frame, state, t_hat, s, mask,
                                      final=levels.is_final(i),
                                      want_denoised=want)
        else:
            new, denoised = euler_step(frame, state, t_hat, s, mask,
                                       want_denoised=want)
        if report is not None:
            report(i, state, t, t_hat, s, denoised, new)
        state = new
    return state


def ancestral_loop(frame: Frame, state: torch.Tensor, levels: Levels, *,
                   eta: float, s_noise: float = 1.,
                   noise: Optional[NoiseStreams] = None,
                   noise_sampler: Optional[Callable] = None, mask=None,
                   report: Optional[Callable] = None, disable=None):
    """Ancestral (DDIM(eta)) steps over ``levels``; noise from the streams
    ``noise`` or, as in k-diffusion, ``noise_sampler(sigma, sigma_next)``
    (called only on steps not known to end at sigma = 0)."""
    for i in _steps(levels.n_steps, disable):
        t, s = levels[i], levels[i + 1]
        step_noise, noise_tensor = None, None
        if eta > 0 and not levels.is_final(i):
            if noise_sampler is not None:
                noise_tensor = noise_sampler(levels.sigmas[i],
                                             levels.sigmas[i + 1])
            else:
                step_noise = noise.for_step(i)
        new, denoised = ancestral_step(
            frame, state, t, s, mask, eta=eta, s_noise=s_noise,
            noise=step_noise, noise_tensor=noise_tensor,
            want_denoised=report is not None)
        if report is not None:
            report(i, state, t, t, s, denoised, new)
        state = new
    return state


def dpmpp_2m_loop(frame: Frame, state: torch.Tensor, levels: Levels, *,
                  mask=None, report: Optional[Callable] = None, disable=None):
    """DPM-Solver++(2M) over ``levels``: first order on the first step."""
    previous = None
    for i in _steps(levels.n_steps, disable):
        t, s = levels[i], levels[i + 1]
        new, denoised = dpmpp_2m_step(frame, state, t, s, mask,
                                      previous=previous)
        if report is not None:
            report(i, state, t, t, s, denoised, new)
        previous = (denoised, t.lam)
        state = new
    return state


def vp_levels(gammas: torch.Tensor, batch: int) -> Levels:
    """Levels of a module sampler's grid gamma_0..gamma_n whose last step
    goes onto sigma_tilde = 0 (lambda = +inf) instead of gamma_n."""
    lams = (gammas / 2).clone()
    lams[-1] = math.inf
    return Levels(lams, batch, ends_at_zero=True)

