"""The ``triton`` backend: the four primitives as Triton kernel launches.

The launches use ``wrap_triton``, so :mod:`ddm_fast.ops.library` registers
them as ``torch.library.triton_op`` (``LIBRARY_KIND``): eager, under
``torch.compile(fullgraph=True)`` Inductor sees the kernels themselves.
Semantics are those of :mod:`.reference` (the oracle); inputs arrive
contiguous, the coefficient table in the math dtype (which the kernels read
as their math dtype), the mask prepared by :mod:`.layout`. The noise is
generated in float32. ``affine_sum``/``affine_dots`` are deterministic:
partial sums per (row, block) and a second fixed-order reduction, no
atomics, block sizes a function of the shape only (not autotuned).

On CPU the kernels run only through Triton's interpreter (``TRITON_INTERPRET=1``
set before Triton is imported): slow, meant for tests.
"""
from __future__ import annotations

import contextlib
import os
import re
from typing import List, Optional, Sequence, Tuple

import torch

from ..seeds import has_noise, kernel_seed
from . import BackendUnavailableError
from .layout import kernel_mask_layout

__all__ = ["why_unavailable", "randn", "affine", "affine_sum", "affine_dots"]

LIBRARY_KIND = "triton_op"

MIN_TRITON = (3, 5)  # int64 Philox counters use their high word from 3.5 on

try:
    import triton
except ImportError as _exc:  # the backend reports itself unavailable
    triton = None
    _TRITON_IMPORT_ERROR = str(_exc)


def _static_reason() -> Optional[str]:
    """Why Triton itself cannot serve (missing, too old), or None."""
    if triton is None:
        return (f"triton is not installed ({_TRITON_IMPORT_ERROR}); install "
                f"triton>={MIN_TRITON[0]}.{MIN_TRITON[1]}")
    version = tuple(int(p) for p in re.findall(r"\d+", triton.__version__)[:2])
    if version < MIN_TRITON:
        return (f"triton {triton.__version__} is too old; the counter-based "
                f"noise needs triton>={MIN_TRITON[0]}.{MIN_TRITON[1]}")
    return None


# computed once: why_unavailable runs on every dispatch, also under
# torch.compile, where it must stay cheap and traceable
_STATIC_REASON = _static_reason()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def why_unavailable(name: str = "triton") -> Optional[str]:
    """None if the Triton kernels can run here, else why not."""
    if _STATIC_REASON is not None:
        return _STATIC_REASON
    if torch.cuda.is_available() or _interpreting():
        return None
    return ("no CUDA device is visible and TRITON_INTERPRET=1 is not set (the "
            "Triton interpreter runs the kernels on CPU, slowly, for tests)")


def _check_device(device) -> None:
    device = torch.device(device)
    if device.type == "cuda" or (device.type == "cpu" and _interpreting()):
        return
    raise BackendUnavailableError(
        f"the triton backend cannot run tensors on {device}: it needs CUDA "
        f"tensors, or CPU tensors with TRITON_INTERPRET=1 set before triton "
        f"is imported")


def _on(device: torch.device):
    """Launch on the tensors' device (and so its current stream), not on
    whichever device happens to be current: tensors on cuda:1 while cuda:0
    is current would otherwise fail or race."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _seed_arg(seed, device):
    """The kernels' ``seed`` argument: the seed word itself (the kernel
    loads it, SEED_IN_MEMORY=1) or the int (0 when there is no noise)."""
    value, word = kernel_seed(seed, device)
    return word if word is not None else max(value, 0)


# ------------------------------------------------------------ the launches
if _STATIC_REASON is None:  # triton present and recent enough
    from torch.library import wrap_triton

    from ..kernels.affine import affine_kernel
    from ..kernels.affine_sum import row_reduce_kernel, sum_partials_kernel
    from ..kernels.common import (elementwise_launch, needs_int64_index,
                                  reduction_launch, sub_counters, tile_flags)
    from ..kernels.randn import randn_kernel


def randn(numel: int, seed: int, offset: int, dtype: torch.dtype,
          device: torch.device) -> torch.Tensor:
    """noise[offset + i] for i < numel, flat."""
    _check_device(device)
    out = torch.empty(numel, dtype=dtype, device=device)
    if numel > 0:
        first = offset // 4
        n_counters = (offset + numel - 1) // 4 - first + 1
        counters, warps = elementwise_launch(numel)
        with _on(device):
            wrap_triton(randn_kernel)[(triton.cdiv(n_counters, counters),)](
                out, _seed_arg(seed, device), offset, first, numel,
                ALIGNED=int(offset % 4 == 0 and numel % 4 == 0
                            and out.element_size() <= 4),
                INDEX_64=needs_int64_index(numel), COUNTERS=counters,
                SUB=sub_counters(counters, warps),
                SEED_IN_MEMORY=int(isinstance(seed, torch.Tensor)), num_warps=warps)
    return out


def affine(x0, x1, x2, coeffs, coeffs2, mask, seed: int, offset: int,
           bias: bool, out_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, out2); out2 is empty (0,) when coeffs2 is None."""
    _check_device(x0.device)
    n_inputs = 1 + (x1 is not None) + (x2 is not None)
    numel = x0.numel()
    out = torch.empty(x0.shape, dtype=out_dtype, device=x0.device)
    out2 = torch.empty(x0.shape, dtype=out_dtype, device=x0.device) \
        if coeffs2 is not None else x0.new_empty(0, dtype=out_dtype)
    if numel == 0:
        return out, out2
    mask_mode, mask_inner, mask_period = kernel_mask_layout(mask, x0.shape)
    first = offset // 4
    n_counters = (offset + numel - 1) // 4 - first + 1
    counters, warps = elementwise_launch(numel)
    per_row = numel // coeffs.shape[0]
    itemsize = max(t.element_size() for t in (x0, x1, x2, out) if t is not None)
    flags = tile_flags(counters, offset, per_row, mask_mode, mask_inner,
                       mask_period, itemsize=itemsize,
                       tables=1 + (coeffs2 is not None))
    with _on(x0.device):
        wrap_triton(affine_kernel)[(triton.cdiv(n_counters, counters),)](
            x0, x1 if x1 is not None else x0, x2 if x2 is not None else x0,
            coeffs, coeffs2 if coeffs2 is not None else coeffs,
            mask if mask is not None else x0,
            out, out2 if coeffs2 is not None else out,
            _seed_arg(seed, x0.device), offset, first, numel, per_row,
            mask_inner, mask_period,
            N_INPUTS=n_inputs, HAS_NOISE=int(has_noise(seed)), HAS_BIAS=int(bias),
            HAS_OUT2=int(coeffs2 is not None), **flags,
            INDEX_64=needs_int64_index(numel), COUNTERS=counters,
            SUB=sub_counters(counters, warps),
            SEED_IN_MEMORY=int(isinstance(seed, torch.Tensor)), num_warps=warps)
    return out, out2


def _row_reduce(x0, x1, x2, weight, coeffs, mask, seed, offset, bias,
                result, power, weight_kind):
    """Both reduction stages; (rows, 1) for result 0, (rows, columns) for
    result 1, in the dtype of coeffs."""
    _check_device(x0.device)
    n_inputs = 1 + (x1 is not None) + (x2 is not None)
    rows, n_coeff_cols = coeffs.shape
    n_out_cols = 1 if result == 0 else n_coeff_cols
    numel = x0.numel()
    if numel == 0:
        return torch.zeros((rows, n_out_cols), dtype=coeffs.dtype,
                           device=x0.device)
    per_row = numel // rows
    counters_per_row = (per_row + 6) // 4  # a row spans at most this many
    counters, num_warps = reduction_launch(counters_per_row)
    blocks_per_row = triton.cdiv(counters_per_row, counters)
    partials = torch.empty(rows * blocks_per_row * n_out_cols,
                           dtype=coeffs.dtype, device=x0.device)
    mask_mode, mask_inner, mask_period = kernel_mask_layout(mask, x0.shape)
    itemsize = max(t.element_size() for t in (x0, x1, x2, weight)
                   if t is not None)
    flags = tile_flags(counters, offset, per_row, mask_mode, mask_inner,
                       mask_period, row_pair=False, itemsize=itemsize)
    with _on(x0.device):
        wrap_triton(row_reduce_kernel)[(rows * blocks_per_row,)](
            x0, x1 if x1 is not None else x0, x2 if x2 is not None else x0,
            coeffs, weight if weight is not None else x0,
            mask if mask is not None else x0, partials,
            _seed_arg(seed, x0.device), offset, per_row, blocks_per_row,
            mask_inner, mask_period,
            N_INPUTS=n_inputs, HAS_NOISE=int(has_noise(seed)), HAS_BIAS=int(bias),
            RESULT=result, POWER=power, WEIGHT=weight_kind, **flags,
            INDEX_64=needs_int64_index(numel), COUNTERS=counters,
            SUB=sub_counters(counters, num_warps),
            SEED_IN_MEMORY=int(isinstance(seed, torch.Tensor)),
            num_warps=num_warps)
    return _sum_partials(partials, rows, n_out_cols, blocks_per_row)


def _sum_partials(partials, rows, n_out_cols, blocks_per_row):
    """Stage 2: each row's partials in a fixed order; a row of one block
    needs no second launch."""
    if blocks_per_row == 1:
        return partials.reshape(rows, n_out_cols)
    out = torch.empty((rows, n_out_cols), dtype=partials.dtype,
                      device=partials.device)
    block = min(1024, max(16, triton.next_power_of_2(blocks_per_row)))
    with _on(partials.device):
        wrap_triton(sum_partials_kernel)[(rows * n_out_cols,)](
            partials, out, blocks_per_row, n_out_cols, BLOCK=block,
            ITERS=triton.cdiv(blocks_per_row, block))
    return out


def affine_sum(x0, x1, x2, coeffs, mask, seed: int, offset: int, power: int,
               bias: bool) -> torch.Tensor:
    """Per-row sums of (combination) ** power over valid elements."""
    return _row_reduce(x0, x1, x2, None, coeffs, mask, seed, offset, bias,
                       0, power, 0).reshape(coeffs.shape[0])


def affine_dots(x0, x1, x2, weight, coeffs, mask, seed: int, offset: int,
                bias: bool, weight_kind: int) -> torch.Tensor:
    """(rows, columns): per row and column j of the combination (inputs,
    noise, 1) the sum over valid elements of w * column_j, with w = 1
    (weight_kind 0), ``weight`` (1) or the combination itself (2)."""
    return _row_reduce(x0, x1, x2, weight, coeffs, mask, seed, offset, bias,
                       1, 1, weight_kind)
