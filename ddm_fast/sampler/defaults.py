"""Default pre-/post-processing and prior functions of the samplers.

Same names and signatures as ddm_dynamical's (the pre/post functions live
with the :class:`ddm_fast.denoiser.Denoiser`, which owns them); the prior
sample is the counter-based noise (docs/math.md, "Counter-based noise")
instead of ``torch.randn``, so that an ensemble member's prior does not
depend on how the ensemble is batched.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import ops
from ..denoiser import default_postprocessing, default_preprocessing
from ..seeds import draw_seed

__all__ = [
    "default_preprocessing",
    "default_postprocessing",
    "default_prior_sample",
]


def default_prior_sample(sample_shape: Sequence[int] = torch.Size([]),
                         seed: Optional[int] = None, offset: int = 0,
                         dtype: Optional[torch.dtype] = None, device=None,
                         layout: torch.layout = torch.strided,
                         **randn_kwargs) -> torch.Tensor:
    """Standard normal prior sample: element i is noise[offset + i] of the
    counter-based stream ``seed`` (None: drawn from torch's CPU generator).

    Other keyword arguments are ``torch.randn``'s, as in ddm_dynamical: with
    a ``generator`` the sample is ``torch.randn(shape, generator=...,
    ...)`` (that generator decides the noise, not ``seed``);
    ``requires_grad`` and ``pin_memory`` apply to the counter-based sample.
    """
    shape = tuple(torch.Size(sample_shape))
    if "generator" in randn_kwargs:
        if seed is not None:
            raise ValueError("give either seed (counter-based noise) or "
                             "generator (torch.randn), not both")
        return torch.randn(shape, dtype=dtype, device=device, layout=layout,
                           **randn_kwargs)
    if layout != torch.strided:
        raise ValueError(f"layout must be torch.strided, got {layout}")
    requires_grad = randn_kwargs.pop("requires_grad", False)
    pin_memory = randn_kwargs.pop("pin_memory", False)
    if randn_kwargs:
        raise TypeError("default_prior_sample got unexpected keyword "
                        f"argument(s) {sorted(randn_kwargs)} (torch.randn's "
                        "generator, requires_grad and pin_memory are taken)")
    sample = ops.randn(shape, draw_seed(seed), offset,
                       dtype=dtype or torch.float32, device=device)
    if pin_memory:
        sample = sample.pin_memory()
    return sample.requires_grad_(bool(requires_grad))
