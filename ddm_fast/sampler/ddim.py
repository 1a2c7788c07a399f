"""DDIM(eta) and DDPM ancestral samplers on per-sample log-SNRs (docs/math.md,
"DDIM and DDPM")."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import ops
from ..ops import coefficient_dtype
from ..sampling import draw_seed
from ..utils import alpha_sigma
from .base import BaseSampler, StepOutput

__all__ = ["DDIMSampler", "DDPMSampler"]


class DDIMSampler(BaseSampler):
    """DDIM (Song et al. 2021) with stochasticity ``eta`` in [0, 1].

    z_s = alpha_s x_hat + sqrt(sigma_s^2 - c^2) eps_hat + c xi with
    c = eta sigma_s sqrt(-expm1(gamma_t - gamma_s)): eta = 0 is the
    deterministic DDIM (= Euler) step, eta = 1 DDPM ancestral sampling. The
    whole step, x_hat and eps_hat folded in from the parameterization's
    coefficients, is one fused op over (z, f) plus noise.
    """

    def __init__(self, scheduler: Callable, timesteps: int = 50,
                 denoising_network: Optional[Callable] = None,
                 pre_func: Optional[Callable] = None,
                 post_func: Optional[Callable] = None,
                 prior_sampler: Optional[Callable] = None,
                 param=None, gamma_min: float = -15., gamma_max: float = 15.,
                 pbar: bool = True, eta: float = 0.,
                 seed: Optional[int] = None, **kwargs):
        super().__init__(scheduler=scheduler, timesteps=timesteps,
                         denoising_network=denoising_network,
                         pre_func=pre_func, post_func=post_func,
                         prior_sampler=prior_sampler, param=param,
                         gamma_min=gamma_min, gamma_max=gamma_max, pbar=pbar,
                         seed=seed, **kwargs)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)):
            raise TypeError(f"eta must be a float, got {type(eta).__name__}")
        if not 0. <= float(eta) <= 1.:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        self.eta = float(eta)

    @property
    def needs_noise(self) -> bool:
        return self.eta > 0

    def step_coefficients(self, gamma_t: torch.Tensor, gamma_s: torch.Tensor):
        """(B, 3) coefficients of z_s over (z, f, xi) and (B, 3) of x_hat."""
        p, q = self.param.denoise_coefficients(gamma_t)
        r, s = self.param.noise_coefficients(gamma_t)
        alpha_s, sigma_s = alpha_sigma(gamma_s)
        snr_ratio = torch.exp(gamma_t - gamma_s)  # SNR_t / SNR_s in (0, 1]
        eta_sq = self.eta * self.eta
        noise_std = self.eta * sigma_s * torch.sqrt(
            -torch.expm1(gamma_t - gamma_s))
        # sqrt(sigma_s^2 - c^2) = sigma_s sqrt(1 - eta^2 (1 - SNR_t/SNR_s)),
        # written without cancellation
        eps_weight = sigma_s * torch.sqrt((1 - eta_sq) + eta_sq * snr_ratio)
        coeffs = torch.stack((alpha_s * p + eps_weight * r,
                              alpha_s * q + eps_weight * s, noise_std), 1)
        denoised = torch.stack((p, q, torch.zeros_like(p)), 1)
        return coeffs, denoised

    def step(self, z: torch.Tensor, gamma_t, gamma_s,
             mask: Optional[torch.Tensor] = None, *, last: bool = False,
             seed: Optional[int] = None, offset: int = 0,
             return_denoised: bool = False, **conditioning) -> StepOutput:
        """One step gamma_t -> gamma_s of per-sample (B,) log-SNRs; the noise
        is stream ``seed`` at ``offset`` (skipped when ``last``: onto
        sigma_tilde = 0 the noise weight is 0). Returns (z_s, x_hat or None).
        """
        gamma_t, gamma_s = self.check_step_args(z, gamma_t, gamma_s, mask)
        prediction = self.estimate_prediction(z, gamma_t, mask, **conditioning)
        coeffs, denoised = self.step_coefficients(gamma_t, gamma_s)
        dtype = coefficient_dtype(z)
        with_noise = self.eta > 0 and not last
        n_cols = 3 if with_noise else 2
        out = ops.affine([z, prediction], coeffs[:, :n_cols].to(dtype), mask,
                         draw_seed(seed) if with_noise else None, offset,
                         coeffs2=denoised[:, :n_cols].to(dtype)
                         if return_denoised else None)
        return out if return_denoised else (out, None)


class DDPMSampler(DDIMSampler):
    """DDPM ancestral sampling (Ho et al. 2020): DDIM with eta = 1."""

    def __init__(self, scheduler: Callable, timesteps: int = 50,
                 denoising_network: Optional[Callable] = None,
                 pre_func: Optional[Callable] = None,
                 post_func: Optional[Callable] = None,
                 prior_sampler: Optional[Callable] = None,
                 param=None, gamma_min: float = -15., gamma_max: float = 15.,
                 pbar: bool = True, seed: Optional[int] = None, **kwargs):
        super().__init__(scheduler=scheduler, timesteps=timesteps,
                         denoising_network=denoising_network,
                         pre_func=pre_func, post_func=post_func,
                         prior_sampler=prior_sampler, param=param,
                         gamma_min=gamma_min, gamma_max=gamma_max, pbar=pbar,
                         eta=1., seed=seed, **kwargs)
