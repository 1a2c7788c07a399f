"""Encoder with a learnable network behind an optional physical encoder."""
from __future__ import annotations

from typing import Optional

import torch

from .._compat import warn_ignored_kwargs
from .._validation import check_mask, check_tensor
from .gaussian import zero_masked

__all__ = ["NeuralEncoder"]


class NeuralEncoder(torch.nn.Module):
    """latent = network(physical_encoder(raw, mask), mask), masked to 0.

    ``network`` is called as ``network(tensor, mask)`` (the toolbox
    convention). Without a physical encoder the raw data goes to the network
    unchanged. ``n_dims`` (input channels consumed inside a
    :class:`CombinedEncoder`) defaults to the physical encoder's, else 1.
    Extra keyword arguments are accepted and ignored, with a warning.
    """

    def __init__(self, network: torch.nn.Module,
                 physical_encoder: Optional[torch.nn.Module] = None,
                 **kwargs):
        super().__init__()
        warn_ignored_kwargs(self, kwargs)
        if not callable(network):
            raise TypeError(f"network must be a callable module, got "
                            f"{type(network).__name__}")
        if physical_encoder is not None and not callable(physical_encoder):
            raise TypeError(f"physical_encoder must be a callable module or "
                            f"None, got {type(physical_encoder).__name__}")
        self.network = network
        self.physical_encoder = physical_encoder
        self.n_dims = getattr(physical_encoder, "n_dims", 1)

    def forward(self, in_tensor: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_tensor("in_tensor", in_tensor, min_ndim=1)
        check_mask(mask, in_tensor, like_name="in_tensor")
        encoded = in_tensor if self.physical_encoder is None else \
            self.physical_encoder(in_tensor, mask)
        return zero_masked(self.network(encoded, mask), mask)
