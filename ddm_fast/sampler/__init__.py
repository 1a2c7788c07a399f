"""Samplers: integrate from the prior to the data with a denoising network.

Module API with ddm_dynamical's constructor (``scheduler, timesteps,
denoising_network, pre_func, post_func, prior_sampler, param, gamma_min,
gamma_max, pbar``) and methods ``sample(shape, mask=None, **conditioning)``,
``reconstruct(z, n_steps, mask=None, **conditioning)`` and the per-sample
``step(z, gamma_t, gamma_s, ...)``. Every step is one or two fused
:func:`ddm_fast.ops.affine` calls (docs/math.md, "Sampler steps" and
"The coefficient algebra").
"""
from .base import BaseSampler
from .ddim import DDIMSampler, DDPMSampler
from .defaults import (default_postprocessing, default_preprocessing,
                       default_prior_sample)
from .dpm_solver import DPMSolverPP2MSampler
from .euler import EulerSampler
from .heun import HeunSampler
from .k_diffusion import KDiffusionSampler

__all__ = [
    "BaseSampler",
    "HeunSampler",
    "EulerSampler",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPP2MSampler",
    "KDiffusionSampler",
    "default_preprocessing",
    "default_postprocessing",
    "default_prior_sample",
]
