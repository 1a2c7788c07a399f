"""How a location-scale decoder turns its (latent) input into the predicted
physical state. Each function is called as ``func(decoder, in_tensor,
first_guess)`` and may read the decoder's per-channel ``mean`` and ``std``
buffers (shape (K,)); :func:`ddm_fast.encoder.gaussian.channel_view` lays
them over dim 1 of the data.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._validation import check_same_shapes, check_tensor
from ..encoder.gaussian import channel_view

__all__ = ["state_prediction", "delta_prediction"]


def _destandardise(decoder, in_tensor: torch.Tensor) -> torch.Tensor:
    std = channel_view(decoder.std, in_tensor, "std").to(in_tensor.dtype)
    mean = channel_view(decoder.mean, in_tensor, "mean").to(in_tensor.dtype)
    return in_tensor * std + mean


def state_prediction(decoder, in_tensor: torch.Tensor,
                     first_guess: Optional[torch.Tensor] = None
                     ) -> torch.Tensor:
    """The input is the standardised state: in * std + mean. No first guess
    is needed (it is ignored when given)."""
    return _destandardise(decoder, in_tensor)


def delta_prediction(decoder, in_tensor: torch.Tensor,
                     first_guess: Optional[torch.Tensor] = None
                     ) -> torch.Tensor:
    """The input is the standardised increment: first_guess + in * std + mean."""
    if first_guess is None:
        raise ValueError(
            "first_guess is required by delta_prediction (the decoded state is "
            "first_guess + increment); pass it, or use state_prediction")
    check_tensor("first_guess", first_guess)
    check_same_shapes(["in_tensor", "first_guess"], [in_tensor, first_guess])
    return first_guess + _destandardise(decoder, in_tensor)
