"""Heun sampler of Karras et al. (2022), Alg. 2, on per-sample log-SNRs: an
adapter over :func:`ddm_fast.sampler.methods.euler_heun_loop`."""
from __future__ import annotations

from typing import Callable, Optional

from ..seeds import draw_seed
from . import methods
from .base import BaseSampler, StepOutput, check_number

__all__ = ["HeunSampler"]


class HeunSampler(BaseSampler):
    """Heun's second-order sampler (Karras et al. 2022, Alg. 2).

    Each step is an Euler step of the probability-flow ODE in the exploding
    form followed, if ``heun``, by the trapezoidal correction with a second
    denoiser call; the step onto sigma_tilde = 0 is a plain Euler step (it
    returns x_hat). ``S_churn`` > 0 adds noise before each step to members
    with S_tmin <= sigma_tilde <= S_tmax, raising sigma_tilde by the factor
    1 + min(S_churn / n_steps, sqrt(2) - 1); ``S_noise`` scales that noise.
    With ``heun=False`` this is the Euler sampler.
    """

    def __init__(self, scheduler: Callable, timesteps: int = 20,
                 denoising_network: Optional[Callable] = None,
                 pre_func: Optional[Callable] = None,
                 post_func: Optional[Callable] = None,
                 prior_sampler: Optional[Callable] = None,
                 param=None, heun: bool = True,
                 gamma_min: Optional[float] = None,
                 gamma_max: Optional[float] = None, pbar: bool = False,
                 S_churn: float = 0., S_tmin: float = 0.,
                 S_tmax: float = float("inf"), S_noise: float = 1.,
                 seed: Optional[int] = None, **kwargs):
        super().__init__(scheduler=scheduler, timesteps=timesteps,
                         denoising_network=denoising_network,
                         pre_func=pre_func, post_func=post_func,
                         prior_sampler=prior_sampler, param=param,
                         gamma_min=gamma_min, gamma_max=gamma_max, pbar=pbar,
                         seed=seed, **kwargs)
        if not isinstance(heun, bool):
            raise TypeError(f"heun must be a bool, got {type(heun).__name__}")
        self.heun = heun
        self.S_churn = check_number("S_churn", S_churn, 0.)
        self.S_tmin = check_number("S_tmin", S_tmin, 0.)
        self.S_tmax = check_number("S_tmax", S_tmax)
        if self.S_tmax < self.S_tmin:
            raise ValueError(f"S_tmax must be >= S_tmin ({self.S_tmin}), got "
                             f"{self.S_tmax}")
        self.S_noise = check_number("S_noise", S_noise, 0.)

    @property
    def needs_noise(self) -> bool:
        return self.S_churn > 0

    def churn_factor(self, n_steps: int) -> float:
        """Karras's gamma_i = min(S_churn / n_steps, sqrt(2) - 1)."""
        return min(self.S_churn / n_steps, methods.MAX_CHURN)

    def run_loop(self, frame, state, levels, *, noise, mask, report):
        return methods.euler_heun_loop(
            frame, state, levels, heun=self.heun,
            churn=self.churn_factor(levels.n_steps), s_tmin=self.S_tmin,
            s_tmax=self.S_tmax, s_noise=self.S_noise, noise=noise, mask=mask,
            report=report, disable=not self.pbar)

    def step(self, z, gamma_t, gamma_s, mask=None, *, last: bool = False,
             churn: float = 0., seed: Optional[int] = None, offset: int = 0,
             return_denoised: bool = False, **conditioning) -> StepOutput:
        """One step gamma_t -> gamma_s of per-sample (B,) log-SNRs.

        ``churn``: Karras's gamma_i for this step (0: no noise); its noise is
        stream ``seed`` at ``offset``. ``last``: every member steps onto
        sigma_tilde = 0 (skips the second denoiser call; members with
        gamma_s = +inf get the Euler step anyway). Returns (z_s, x_hat or
        None), x_hat the first denoiser estimate (at the churned level).
        """
        gamma_t, gamma_s = self.check_step_args(z, gamma_t, gamma_s, mask)
        churn = check_number("churn", churn, 0.)
        frame = self.frame(mask, conditioning)
        t, s = methods.Level(gamma_t / 2), methods.Level(gamma_s / 2)
        if churn > 0:
            z, t = methods.churn_step(frame, z, t, churn, self.S_tmin,
                                      self.S_tmax, self.S_noise,
                                      (draw_seed(seed), offset), mask)
        if self.heun:
            return methods.heun_step(frame, z, t, s, mask, final=last,
                                     want_denoised=return_denoised)
        return methods.euler_step(frame, z, t, s, mask,
                                  want_denoised=return_denoised)
