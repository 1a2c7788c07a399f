"""Decoder with a learnable network in front of a physical decoder."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .base_decoder import BaseDecoder

__all__ = ["NeuralDecoder"]


class NeuralDecoder(BaseDecoder):
    """decoded = physical_decoder(network(latent, mask), first_guess, mask).

    ``stochastic`` is passed on to the physical decoder, as are extra keyword
    arguments (set as its attributes, the toolbox behaviour). ``n_dims``
    (latent channels consumed inside a :class:`CombinedDecoder`) defaults to
    the physical decoder's, i.e. a network that keeps the channel count.
    """

    def __init__(self, network: torch.nn.Module, physical_decoder: BaseDecoder,
                 stochastic: bool = False, n_dims: Optional[int] = None,
                 **kwargs):
        if not callable(network):
            raise TypeError(f"network must be a callable module, got "
                            f"{type(network).__name__}")
        if not isinstance(physical_decoder, BaseDecoder):
            raise TypeError(f"physical_decoder must be a ddm_fast decoder "
                            f"(BaseDecoder), got {type(physical_decoder).__name__}")
        super().__init__(stochastic=stochastic)
        self.network = network
        self.physical_decoder = physical_decoder
        self.stochastic = stochastic          # now reaches physical_decoder
        for key, value in kwargs.items():
            setattr(self.physical_decoder, key, value)
        if n_dims is not None and (isinstance(n_dims, bool) or
                                   not isinstance(n_dims, int) or n_dims < 1):
            raise ValueError(f"n_dims must be a positive int or None, got {n_dims!r}")
        self.n_dims = physical_decoder.n_dims if n_dims is None else n_dims

    def _wrapped_decoders(self) -> List[BaseDecoder]:
        decoder = self._modules.get("physical_decoder")
        return [] if decoder is None else [decoder]

    @property
    def n_physical_dims(self) -> int:
        return self.physical_decoder.n_physical_dims

    def forward(self, in_tensor: torch.Tensor,
                first_guess: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.physical_decoder(self.network(in_tensor, mask),
                                     first_guess, mask)

    def update(self, in_tensor: torch.Tensor,
               first_guess: Optional[torch.Tensor],
               target: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> None:
        with torch.no_grad():
            decoded = self.network(in_tensor, mask)
        self.physical_decoder.update(decoded, first_guess, target, mask)

    def loss(self, in_tensor: torch.Tensor,
             first_guess: Optional[torch.Tensor],
             target: torch.Tensor,
             mask: Optional[torch.Tensor] = None
             ) -> Tuple[torch.Tensor, torch.Tensor]:
        decoded = self.network(in_tensor, mask)
        return self.physical_decoder.loss(decoded, first_guess, target, mask)
