"""Default pre-/post-processing and prior functions of the samplers.

Same names and signatures as ddm_dynamical's; the prior sample is the
counter-based noise (docs/math.md, "Counter-based noise") instead of
``torch.randn``, so that an ensemble member's prior does not depend on how
the ensemble is batched.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import ops
from ..sampling import draw_seed

__all__ = [
    "default_preprocessing",
    "default_postprocessing",
    "default_prior_sample",
]


def default_preprocessing(in_data: torch.Tensor, alpha: torch.Tensor,
                          sigma: torch.Tensor, gamma: torch.Tensor,
                          **conditioning) -> torch.Tensor:
    """The network input is the noised state itself."""
    return in_data


def default_postprocessing(prediction: torch.Tensor, in_data: torch.Tensor,
                           alpha: torch.Tensor, sigma: torch.Tensor,
                           gamma: torch.Tensor,
                           **conditioning) -> torch.Tensor:
    """The network output is used as it is."""
    return prediction


def default_prior_sample(sample_shape: Sequence[int] = torch.Size([]),
                         seed: Optional[int] = None, offset: int = 0,
                         dtype: Optional[torch.dtype] = None, device=None,
                         layout: torch.layout = torch.strided
                         ) -> torch.Tensor:
    """Standard normal prior sample: element i is noise[offset + i] of the
    counter-based stream ``seed`` (None: drawn from torch's CPU generator).
    """
    if layout != torch.strided:
        raise ValueError(f"layout must be torch.strided, got {layout}")
    shape = tuple(torch.Size(sample_shape))
    return ops.randn(shape, draw_seed(seed), offset,
                     dtype=dtype or torch.float32, device=device)
