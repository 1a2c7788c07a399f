"""How a kernel reads a broadcast mask: the one mask-layout analysis.

Every fused kernel (Triton, C++, CUDA) reads the mask in its own small shape
instead of materialising the broadcast. That works when the flat data splits
as (O, M, I) and the mask as (O, 1, I): the mask index of data index i is
``(i // period) * inner + i % inner`` with ``inner = I``, ``period = M * I``
(``period == inner``: the mask has the data's layout). (1,1,H,W), (B,1,H,W),
(1,C,H,W), (B,C,1,1) and full masks against (B,C,H,W) all fit; any other
pattern (e.g. (B,1,H,1)) is expanded to the data's shape once.

:func:`prepare_mask` is what the ops layer hands to every backend: contiguous,
``uint8`` (nonzero = valid), in a kernel layout. The reference backend reads
the same tensor by broadcasting it.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

__all__ = ["mask_layout", "prepare_mask", "kernel_mask_layout"]


def mask_layout(mask_shape: Sequence[int], data_shape: Sequence[int]
                ) -> Optional[Tuple[int, int]]:
    """(inner, period) of a mask of ``mask_shape`` broadcast against
    ``data_shape``, or None when it is not of the form (O, 1, I)."""
    mask_shape = (1,) * (len(data_shape) - len(mask_shape)) + tuple(mask_shape)
    phase = 0  # 0: leading full dims (O), 1: broadcast dims (M), 2: trailing (I)
    middle = inner = 1
    for size, mask_size in zip(data_shape, mask_shape):
        if size == 1:
            continue  # a size-1 dim fits any phase
        full = mask_size == size
        if phase == 0 and not full:
            phase = 1
        elif phase == 1 and full:
            phase = 2
        elif phase == 2 and not full:
            return None
        if phase == 1:
            middle *= size
        elif phase == 2:
            inner *= size
    return inner, middle * inner


def prepare_mask(mask: Optional[torch.Tensor], data_shape: Sequence[int]
                 ) -> Optional[torch.Tensor]:
    """The mask as every backend reads it: uint8 (nonzero = valid),
    contiguous, in its own shape when that is a kernel layout, else expanded
    to ``data_shape``."""
    if mask is None:
        return None
    if mask_layout(mask.shape, data_shape) is None:
        mask = mask.expand(tuple(data_shape))
    if mask.dtype == torch.bool:
        mask = mask.contiguous().view(torch.uint8)
    elif mask.dtype != torch.uint8:
        mask = (mask != 0).contiguous().view(torch.uint8)
    return mask.contiguous()


def kernel_mask_layout(mask: Optional[torch.Tensor], data_shape: Sequence[int]
                       ) -> Tuple[int, int, int]:
    """(mode, inner, period) of a prepared mask for a kernel launch:
    mode 0 no mask, 1 the data's layout, 2 the (O, 1, I) layout."""
    if mask is None:
        return 0, 1, 1
    layout = mask_layout(mask.shape, data_shape)
    if layout is None:
        raise ValueError(f"mask of shape {tuple(mask.shape)} is not in a kernel "
                         f"layout for data {tuple(data_shape)}; pass it through "
                         f"prepare_mask first")
    inner, period = layout
    return (1 if inner == period else 2), inner, period
