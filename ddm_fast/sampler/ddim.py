"""DDIM(eta) and DDPM ancestral samplers on per-sample log-SNRs (docs/math.md,
"DDIM and DDPM"): adapters over
:func:`ddm_fast.sampler.methods.ancestral_loop`."""
from __future__ import annotations

from typing import Callable, Optional

from ..seeds import draw_seed
from . import methods
from .base import BaseSampler, StepOutput, check_number

__all__ = ["DDIMSampler", "DDPMSampler"]


class DDIMSampler(BaseSampler):
    """DDIM (Song et al. 2021) with stochasticity ``eta`` in [0, 1].

    z_s = alpha_s x_hat + sqrt(sigma_s^2 - c^2) eps_hat + c xi with
    c = eta sigma_s sqrt(-expm1(gamma_t - gamma_s)): eta = 0 is the
    deterministic DDIM (= Euler) step, eta = 1 DDPM ancestral sampling; in
    the exploding form this is k-diffusion's ancestral step, and it is
    computed as one (:func:`ddm_fast.sampler.methods.ancestral_step`). The
    whole step is one fused op over (z, f) plus noise.
    """

    def __init__(self, scheduler: Callable, timesteps: int = 50,
                 denoising_network: Optional[Callable] = None,
                 pre_func: Optional[Callable] = None,
                 post_func: Optional[Callable] = None,
                 prior_sampler: Optional[Callable] = None,
                 param=None, gamma_min: Optional[float] = None,
                 gamma_max: Optional[float] = None,
                 pbar: bool = True, eta: float = 0.,
                 seed: Optional[int] = None, **kwargs):
        super().__init__(scheduler=scheduler, timesteps=timesteps,
                         denoising_network=denoising_network,
                         pre_func=pre_func, post_func=post_func,
                         prior_sampler=prior_sampler, param=param,
                         gamma_min=gamma_min, gamma_max=gamma_max, pbar=pbar,
                         seed=seed, **kwargs)
        self.eta = check_number("eta", eta, 0., 1.)

    @property
    def needs_noise(self) -> bool:
        return self.eta > 0

    def run_loop(self, frame, state, levels, *, noise, mask, report):
        return methods.ancestral_loop(frame, state, levels, eta=self.eta,
                                      noise=noise, mask=mask, report=report,
                                      disable=not self.pbar)

    def step(self, z, gamma_t, gamma_s, mask=None, *, last: bool = False,
             seed: Optional[int] = None, offset: int = 0,
             return_denoised: bool = False, **conditioning) -> StepOutput:
        """One step gamma_t -> gamma_s of per-sample (B,) log-SNRs; the noise
        is stream ``seed`` at ``offset`` (skipped when ``last``: onto
        sigma_tilde = 0 the noise weight is 0). Returns (z_s, x_hat or None).
        """
        gamma_t, gamma_s = self.check_step_args(z, gamma_t, gamma_s, mask)
        noise = (draw_seed(seed), offset) if self.eta > 0 and not last \
            else None
        return methods.ancestral_step(
            self.frame(mask, conditioning), z, methods.Level(gamma_t / 2),
            methods.Level(gamma_s / 2), mask, eta=self.eta, noise=noise,
            want_denoised=return_denoised)


class DDPMSampler(DDIMSampler):
    """DDPM ancestral sampling (Ho et al. 2020): DDIM with eta = 1."""

    def __init__(self, scheduler: Callable, timesteps: int = 50,
                 denoising_network: Optional[Callable] = None,
                 pre_func: Optional[Callable] = None,
                 post_func: Optional[Callable] = None,
                 prior_sampler: Optional[Callable] = None,
                 param=None, gamma_min: Optional[float] = None,
                 gamma_max: Optional[float] = None,
                 pbar: bool = True, seed: Optional[int] = None, **kwargs):
        kwargs.pop("eta", None)  # always 1 here
        super().__init__(scheduler=scheduler, timesteps=timesteps,
                         denoising_network=denoising_network,
                         pre_func=pre_func, post_func=post_func,
                         prior_sampler=prior_sampler, param=param,
                         gamma_min=gamma_min, gamma_max=gamma_max, pbar=pbar,
                         eta=1., seed=seed, **kwargs)
