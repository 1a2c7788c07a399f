"""Euler sampler: :class:`HeunSampler` without the correction."""
from __future__ import annotations

from typing import Callable, Optional

from .heun import HeunSampler

__all__ = ["EulerSampler"]


class EulerSampler(HeunSampler):
    """Euler steps of the probability-flow ODE in the exploding form,
    x_e,s = x_e,t + (sigma_s - sigma_t)(x_e,t - x_hat)/sigma_t
    (docs/math.md, "Euler"), one denoiser call per step; optional churn as
    in :class:`HeunSampler`."""

    def __init__(self, scheduler: Callable, timesteps: int = 20,
                 denoising_network: Optional[Callable] = None,
                 pre_func: Optional[Callable] = None,
                 post_func: Optional[Callable] = None,
                 prior_sampler: Optional[Callable] = None,
                 param=None, gamma_min: Optional[float] = None,
                 gamma_max: Optional[float] = None,
                 pbar: bool = False, S_churn: float = 0., S_tmin: float = 0.,
                 S_tmax: float = float("inf"), S_noise: float = 1.,
                 seed: Optional[int] = None, **kwargs):
        kwargs.pop("heun", None)  # always False here
        super().__init__(scheduler=scheduler, timesteps=timesteps,
                         denoising_network=denoising_network,
                         pre_func=pre_func, post_func=post_func,
                         prior_sampler=prior_sampler, param=param, heun=False,
                         gamma_min=gamma_min, gamma_max=gamma_max, pbar=pbar,
                         S_churn=S_churn, S_tmin=S_tmin, S_tmax=S_tmax,
                         S_noise=S_noise, seed=seed, **kwargs)
