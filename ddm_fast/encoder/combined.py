"""Encode groups of channels with different encoders and concatenate."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from .._compat import warn_ignored_kwargs
from .._validation import check_mask, check_tensor

__all__ = ["CombinedEncoder", "split_channels", "split_mask"]


def split_channels(name: str, tensor: torch.Tensor, sizes: Sequence[int]
                   ) -> List[torch.Tensor]:
    """Split ``tensor`` along dim 1 into ``sizes`` channels, checking the sum."""
    if tensor.ndim < 2 or tensor.shape[1] != sum(sizes):
        raise ValueError(
            f"{name} must have {sum(sizes)} channels in dim 1 (the sum of the "
            f"parts {list(sizes)}), got shape {tuple(tensor.shape)}")
    return list(tensor.split(list(sizes), dim=1))


def split_mask(mask: Optional[torch.Tensor], ndim: int, sizes: Sequence[int]
               ) -> List[Optional[torch.Tensor]]:
    """Per-part masks: a mask with a channel dimension of size sum(sizes) is
    split like the data; one that broadcasts over channels is shared."""
    if mask is None:
        return [None] * len(sizes)
    aligned = mask.reshape((1,) * (ndim - mask.ndim) + tuple(mask.shape))
    if aligned.ndim < 2 or aligned.shape[1] == 1:
        return [mask] * len(sizes)
    return list(aligned.split(list(sizes), dim=1))


class CombinedEncoder(torch.nn.Module):
    """Apply ``base_encoders`` (in their insertion order) to consecutive
    channel groups and concatenate their outputs along dim 1.

    Each encoder consumes ``encoder.n_dims`` channels (1 when it declares
    none, the toolbox behaviour). Extra keyword arguments are accepted and
    ignored, with a warning naming them.
    """

    def __init__(self, base_encoders: Dict[str, torch.nn.Module], **kwargs):
        super().__init__()
        warn_ignored_kwargs(self, kwargs)
        if not isinstance(base_encoders, dict) and not isinstance(
                base_encoders, torch.nn.ModuleDict):
            raise TypeError(f"base_encoders must be a dict of name -> module, "
                            f"got {type(base_encoders).__name__}")
        if len(base_encoders) == 0:
            raise ValueError("base_encoders must hold at least one encoder")
        for name, encoder in base_encoders.items():
            if not isinstance(encoder, torch.nn.Module):
                raise TypeError(f"base_encoders[{name!r}] must be a "
                                f"torch.nn.Module encoder, got "
                                f"{type(encoder).__name__}")
        self.base_encoders = torch.nn.ModuleDict(base_encoders)

    @property
    def splits(self) -> List[int]:
        return [int(getattr(e, "n_dims", 1)) for e in self.base_encoders.values()]

    @property
    def n_dims(self) -> int:
        return sum(self.splits)

    def forward(self, in_tensor: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_tensor("in_tensor", in_tensor, min_ndim=2)
        check_mask(mask, in_tensor, like_name="in_tensor")
        parts = split_channels("in_tensor", in_tensor, self.splits)
        masks = split_mask(mask, in_tensor.ndim, self.splits)
        return torch.cat([
            encoder(part, part_mask) for encoder, part, part_mask
            in zip(self.base_encoders.values(), parts, masks)
        ], dim=1)
