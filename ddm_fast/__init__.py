"""ddm_fast: fused kernels for denoising diffusion models on geophysical grids.

A drop-in replacement for the ``ddm_dynamical`` toolbox (same public names and
call signatures) whose noising, masked loss and sampler steps run as a few
fused kernels. Submodules load on first use, so ``import ddm_fast`` stays
cheap (no matplotlib, no Triton until they are needed).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "backends", "callbacks", "decoder", "denoiser", "encoder", "ensemble",
    "layers", "loss", "ops", "optimal_model", "parameterization", "sampler", "sampling", "scheduler",
    "training", "utils", "weighting",
)

__all__ = list(_SUBMODULES) + ["DiffusionLoss", "Denoiser", "__version__"]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "DiffusionLoss":
        from .loss import DiffusionLoss
        return DiffusionLoss
    if name == "Denoiser":
        from .denoiser import Denoiser
        return Denoiser
    raise AttributeError(f"module 'ddm_fast' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
