"""Heun sampler of Karras et al. (2022), Alg. 2, on per-sample log-SNRs."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import ops
from ..ops import coefficient_dtype
from ..sampling import (MAX_CHURN, churn_coefficients, draw_seed,
                        euler_coefficients, heun_coefficients)
from ..utils import alpha_sigma
from .base import BaseSampler, StepOutput, col, unit_rows

__all__ = ["HeunSampler"]


def _check_float(name: str, value, minimum: Optional[float] = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if value != value or (minimum is not None and value < minimum):
        raise ValueError(f"{name} must be a number >= {minimum}, got {value}")
    return value


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
                 param=None, heun: bool = True, gamma_min: float = -15.,
                 gamma_max: float = 15., pbar: bool = False,
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
        self.S_churn = _check_float("S_churn", S_churn, 0.)
        self.S_tmin = _check_float("S_tmin", S_tmin, 0.)
        self.S_tmax = _check_float("S_tmax", S_tmax)
        if self.S_tmax < self.S_tmin:
            raise ValueError(f"S_tmax must be >= S_tmin ({self.S_tmin}), got "
                             f"{self.S_tmax}")
        self.S_noise = _check_float("S_noise", S_noise, 0.)

    @property
    def needs_noise(self) -> bool:
        return self.S_churn > 0

    def churn_factor(self, n_steps: int) -> float:
        """Karras's gamma_i = min(S_churn / n_steps, sqrt(2) - 1)."""
        return min(self.S_churn / n_steps, MAX_CHURN)

    def _loop_step(self, z, gamma_t, gamma_s, *, mask, last, seed, offset,
                   return_denoised, n_steps, memory, conditioning):
        return self.step(z, gamma_t, gamma_s, mask, last=last,
                         churn=self.churn_factor(n_steps), seed=seed,
                         offset=offset, return_denoised=return_denoised,
                         **conditioning)

    def step(self, z: torch.Tensor, gamma_t, gamma_s,
             mask: Optional[torch.Tensor] = None, *, last: bool = False,
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
        churn = _check_float("churn", churn, 0.)
        if churn > 0:
            z, gamma_t = self._churn(z, gamma_t, churn, mask, seed, offset)
        batch = z.shape[0]
        dtype = coefficient_dtype(z)
        lam_t, lam_s = gamma_t / 2, gamma_s / 2
        alpha_t, _ = alpha_sigma(gamma_t)
        alpha_s, _ = alpha_sigma(gamma_s)

        f_1 = self.estimate_prediction(z, gamma_t, mask, **conditioning)
        p_1, q_1 = self.param.denoise_coefficients(gamma_t)
        # quantities as coefficient rows over the inputs (z, f_1, f_2)
        unit_z, unit_f1, unit_f2 = unit_rows(batch, 3, gamma_t)
        x_e = unit_z / col(alpha_t)  # exploding state z / alpha
        denoised_1 = col(p_1) * unit_z + col(q_1) * unit_f1

        if not self.heun or last:
            euler = euler_coefficients(lam_t, lam_s)
            z_s = col(alpha_s) * (euler[:, :1] * x_e
                                  + euler[:, 1:] * denoised_1)
            out = ops.affine([z, f_1], z_s[:, :2].to(dtype), mask,
                             coeffs2=denoised_1[:, :2].to(dtype)
                             if return_denoised else None)
            return out if return_denoised else (out, None)

        predictor, corrector = heun_coefficients(lam_t, lam_s)
        # members stepping onto sigma = 0 skip the correction; evaluate their
        # (unused) second prediction at a valid level
        gamma_eval = torch.where(torch.isposinf(gamma_s), gamma_t, gamma_s)
        alpha_eval, _ = alpha_sigma(gamma_eval)
        z_2 = col(alpha_eval) * (predictor[:, :1] * x_e
                                 + predictor[:, 1:] * denoised_1)
        z_2_tensor, den_1_tensor = ops.affine(
            [z, f_1], z_2[:, :2].to(dtype), mask,
            coeffs2=denoised_1[:, :2].to(dtype))
        f_2 = self.estimate_prediction(z_2_tensor, gamma_eval, mask,
                                       **conditioning)
        p_2, q_2 = self.param.denoise_coefficients(gamma_eval)
        denoised_2 = col(p_2) * z_2 + col(q_2) * unit_f2
        z_s = col(alpha_s) * (corrector[:, :1] * x_e
                              + corrector[:, 1:2] * denoised_1
                              + corrector[:, 2:] * denoised_2)
        out = ops.affine([z, f_1, f_2], z_s.to(dtype), mask)
        return out, (den_1_tensor if return_denoised else None)

    def _churn(self, z, gamma_t, churn, mask, seed, offset):
        """Alg. 2, lines 4-6 in the VP form: raise sigma_tilde to sigma_hat
        and add the matching noise; returns (z_hat, gamma_hat)."""
        sigma_t = torch.exp(-gamma_t / 2)
        sigma_hat, noise_std = churn_coefficients(
            sigma_t, churn, self.S_tmin, self.S_tmax, self.S_noise)
        gamma_hat = -2 * torch.log(sigma_hat)
        alpha_t, _ = alpha_sigma(gamma_t)
        alpha_hat, _ = alpha_sigma(gamma_hat)
        # z_hat = alpha_hat (z / alpha_t + noise_std xi)
        coeffs = torch.stack((alpha_hat / alpha_t, alpha_hat * noise_std), 1)
        z_hat = ops.affine([z], coeffs.to(coefficient_dtype(z)), mask,
                           draw_seed(seed), offset)
        return z_hat, gamma_hat
