"""Counting and averaging over the valid elements of a broadcast mask, in
plain PyTorch: shared by the ops layer (its non-fused paths) and the API
layer (:func:`ddm_fast.utils.masked_average`)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

__all__ = ["reduce_dims", "mask_count", "masked_average_torch", "row_sums"]

# Elements a row is summed in before the partial sums are summed in turn.
_CHUNK = 1024


def _numel(shape, dims) -> int:
    count = 1
    for d in dims:
        count *= shape[d]
    return count


def row_sums(values: torch.Tensor) -> torch.Tensor:
    """Sums over the last dimension of a 2-d ``values`` (rows, length),
    in an order that does not depend on the number of threads.

    ``torch.sum`` splits a reduction to a single value (one long row)
    between the threads, so its rounding depends on ``torch.get_num_threads()``;
    with several outputs it gives each output to one thread, which sums it
    in a fixed order. So a long row is summed in chunks of ``_CHUNK`` (many
    outputs), zero-padded to a whole number of chunks (adding 0 is exact),
    and the chunk sums are summed again the same way.
    """
    out_dtype = values.dtype
    if values.dtype in (torch.float16, torch.bfloat16):
        values = values.float()  # partial sums must not round to 8-11 bits
    rows, length = values.shape
    while length > _CHUNK:
        pad = (-length) % _CHUNK
        if pad:
            values = torch.nn.functional.pad(values, (0, pad))
        values = values.reshape(rows, -1, _CHUNK).sum(dim=2)
        length = values.shape[1]
    total = values.sum(dim=1)
    return total.to(out_dtype) if out_dtype.is_floating_point else total


def reduce_dims(ndim: int, dim) -> Tuple[int, ...]:
    """``dim`` (None, an int or a sequence) as sorted non-negative dims."""
    if dim is None:
        return tuple(range(ndim))
    if isinstance(dim, bool) or not isinstance(dim, (int, tuple, list)):
        raise TypeError(f"dim must be None, an int or a sequence of ints, got "
                        f"{type(dim).__name__}")
    if isinstance(dim, int):
        dim = (dim,)
    out = []
    for d in dim:
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"dim must hold ints, got {d!r}")
        if not -ndim <= d < ndim:
            raise ValueError(f"dim {d} is out of range for a tensor with "
                             f"{ndim} dimensions")
        out.append(d % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"dim contains a repeated dimension: {tuple(dim)}")
    return tuple(sorted(out))


def mask_count(mask: Optional[torch.Tensor], shape: Sequence[int],
               dim=None, dtype: torch.dtype = torch.float32,
               device=None) -> torch.Tensor:
    """Number of valid elements of ``mask`` broadcast to ``shape``, summed
    over ``dim`` (None: all), without materialising the broadcast.

    A mask of shape (1, 1, H, W) against data (B, C, H, W) counts each valid
    point B*C times for a full reduction: the sum over the mask's own
    elements is multiplied by the sizes of the reduced dimensions along
    which the mask broadcasts.
    """
    shape = tuple(shape)
    dims = reduce_dims(len(shape), dim)
    if mask is None:
        count = 1
        for d in dims:
            count *= shape[d]
        keep = [s for d, s in enumerate(shape) if d not in dims]
        return torch.full(keep, float(count), dtype=dtype, device=device)
    valid = (mask != 0)
    valid = valid.reshape((1,) * (len(shape) - valid.ndim) + tuple(valid.shape))
    multiplicity = 1
    sum_dims = []
    for d in dims:
        if valid.shape[d] == 1:
            multiplicity *= shape[d]
        else:
            sum_dims.append(d)
    # integer counts: exact, and no float copy of a full-size mask
    valid = valid.sum(dim=sum_dims, keepdim=True, dtype=torch.int64) if sum_dims \
        else valid.to(torch.int64)
    valid = (valid * multiplicity).to(dtype)
    keep_shape = [s for d, s in enumerate(shape) if d not in dims]
    return valid.expand(
        [1 if d in dims else s for d, s in enumerate(shape)]
    ).reshape(keep_shape)


def masked_average_torch(x: torch.Tensor, mask: Optional[torch.Tensor],
                         dim, eps: float) -> torch.Tensor:
    """sum of the valid elements / (their count + eps), in plain PyTorch."""
    dims = reduce_dims(x.ndim, dim)
    if mask is not None:
        x = torch.where(mask != 0, x, torch.zeros((), dtype=x.dtype,
                                                  device=x.device))
    if dims and x.numel():
        # the reduced dims last, flattened: one row per kept position
        kept = [d for d in range(x.ndim) if d not in dims]
        kept_shape = [x.shape[d] for d in kept]
        rows = x.permute(kept + list(dims)).reshape(-1, _numel(x.shape, dims))
        total = row_sums(rows).reshape(kept_shape)
    elif dims:
        total = x.sum(dim=dims)
    else:
        total = x
    count = mask_count(mask, x.shape, dims, dtype=total.dtype
                       if total.is_floating_point() else torch.float32,
                       device=x.device)
    return total / (count + eps)
