"""Decode groups of channels with different decoders and concatenate."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from .._validation import check_tensor
from ..encoder.combined import split_channels, split_mask
from .base_decoder import BaseDecoder

__all__ = ["CombinedDecoder"]


class CombinedDecoder(BaseDecoder):
    """Apply ``base_decoders`` (in insertion order) to consecutive channel
    groups: decoder k reads ``n_dims`` latent channels and writes
    ``n_physical_dims`` physical channels (of the output, the first guess
    and the target). ``stochastic`` and extra keyword arguments are set on
    every base decoder. The loss is the mean of the decoders' losses.
    """

    def __init__(self, base_decoders: Dict[str, BaseDecoder],
                 stochastic: bool = False, **kwargs):
        if not isinstance(base_decoders, (dict, torch.nn.ModuleDict)):
            raise TypeError(f"base_decoders must be a dict of name -> decoder, "
                            f"got {type(base_decoders).__name__}")
        if len(base_decoders) == 0:
            raise ValueError("base_decoders must hold at least one decoder")
        for name, decoder in base_decoders.items():
            if not isinstance(decoder, BaseDecoder):
                raise TypeError(f"base_decoders[{name!r}] must be a ddm_fast "
                                f"decoder, got {type(decoder).__name__}")
        super().__init__(stochastic=stochastic)
        self.base_decoders = torch.nn.ModuleDict(base_decoders)
        self.stochastic = stochastic          # now reaches the base decoders
        for decoder in self.base_decoders.values():
            for key, value in kwargs.items():
                setattr(decoder, key, value)

    def _wrapped_decoders(self) -> List[BaseDecoder]:
        decoders = self._modules.get("base_decoders")
        return [] if decoders is None else list(decoders.values())

    @property
    def splits(self) -> List[int]:
        return [d.n_dims for d in self.base_decoders.values()]

    def enumerate_decoder_in(self, in_tensor: torch.Tensor):
        """enumerate over (decoder, its latent channels) pairs, splitting
        ``in_tensor`` along dim 1 by :attr:`splits` (ddm_dynamical's
        helper)."""
        check_tensor("in_tensor", in_tensor, min_ndim=2)
        return enumerate(zip(
            self.base_decoders.values(),
            split_channels("in_tensor", in_tensor, self.splits)))

    @property
    def physical_splits(self) -> List[int]:
        return [d.n_physical_dims for d in self.base_decoders.values()]

    @property
    def n_dims(self) -> int:
        return sum(self.splits)

    @property
    def n_physical_dims(self) -> int:
        return sum(self.physical_splits)

    def _parts(self, in_tensor, first_guess, target, mask):
        """Per-decoder (latent, first_guess, target, mask) tuples."""
        check_tensor("in_tensor", in_tensor, min_ndim=2)
        latents = split_channels("in_tensor", in_tensor, self.splits)
        physical = self.physical_splits
        guesses = [None] * len(physical) if first_guess is None else \
            split_channels("first_guess", first_guess, physical)
        targets = [None] * len(physical) if target is None else \
            split_channels("target", target, physical)
        if mask is not None:
            check_tensor("mask", mask)
            if mask.ndim > in_tensor.ndim:
                raise ValueError(f"mask has more dimensions than in_tensor: "
                                 f"{tuple(mask.shape)} vs {tuple(in_tensor.shape)}")
        masks = split_mask(mask, in_tensor.ndim, physical)
        return list(zip(self.base_decoders.values(), latents, guesses,
                        targets, masks))

    def forward(self, in_tensor: torch.Tensor,
                first_guess: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return torch.cat([
            decoder(latent, guess, part_mask)
            for decoder, latent, guess, _, part_mask
            in self._parts(in_tensor, first_guess, None, mask)
        ], dim=1)

    def update(self, in_tensor: torch.Tensor,
               first_guess: Optional[torch.Tensor],
               target: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> None:
        check_tensor("target", target)
        for decoder, latent, guess, part_target, part_mask in self._parts(
                in_tensor, first_guess, target, mask):
            decoder.update(latent, guess, part_target, part_mask)

    def loss(self, in_tensor: torch.Tensor,
             first_guess: Optional[torch.Tensor],
             target: torch.Tensor,
             mask: Optional[torch.Tensor] = None
             ) -> Tuple[torch.Tensor, torch.Tensor]:
        check_tensor("target", target)
        nll, climatological = zip(*[
            decoder.loss(latent, guess, part_target, part_mask)
            for decoder, latent, guess, part_target, part_mask
            in self._parts(in_tensor, first_guess, target, mask)
        ])
        return torch.stack(nll).mean(), torch.stack(climatological).mean()
