"""Per-row masked reductions of the affine combination, deterministic.

Stage 1 (:func:`row_reduce_kernel`): program p = (row, block) owns
``COUNTERS`` Philox counters of one row (the row's elements are
[row * per_row, (row + 1) * per_row); a counter straddling two rows is
computed by both programs, each keeping its own elements). It writes one
partial sum per result column to ``partials[row, block, :]``.
Stage 2 (:func:`sum_partials_kernel`): one program per (row, column) adds the
row's partials in a fixed order. No atomics: the same inputs give the same
bits on every run.

Two kinds of result (constexpr ``RESULT``):

- ``RESULT == 0``: sum of v ** POWER, v the combination (``affine_sum``).
- ``RESULT == 1``: for every column j of the combination (inputs, noise,
  constant 1) the sum of w * column_j, with the weight w (``WEIGHT``) 0: 1,
  1: a tensor, 2: the combination v itself. These are the gradients of
  ``affine`` / ``affine_sum`` with respect to their coefficients.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import combine, load_inputs, mask_keep, noise_tile


@triton.jit(do_not_specialize=["seed", "offset"])
def row_reduce_kernel(x0_ptr, x1_ptr, x2_ptr, c_ptr, w_ptr, mask_ptr,
                      partial_ptr,
                      seed, offset, per_row, blocks_per_row,
                      mask_inner, mask_period,
                      N_INPUTS: tl.constexpr, HAS_NOISE: tl.constexpr,
                      HAS_BIAS: tl.constexpr, MASK_MODE: tl.constexpr,
                      RESULT: tl.constexpr, POWER: tl.constexpr,
                      WEIGHT: tl.constexpr, INDEX_64: tl.constexpr,
                      COUNTERS: tl.constexpr):
    NCOLS: tl.constexpr = N_INPUTS + HAS_NOISE + HAS_BIAS
    MATH: tl.constexpr = c_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)
    row = pid // blocks_per_row
    block = pid % blocks_per_row
    row_start = row * per_row
    first_counter = (offset + row_start) // 4
    counters = (first_counter + block * COUNTERS
                + tl.arange(0, COUNTERS)[:, None])
    cols = tl.arange(0, 4)[None, :]
    idx = counters * 4 + cols - offset
    in_range = (idx >= row_start) & (idx < row_start + per_row)
    if not INDEX_64:  # int32 mask divisions are several times cheaper
        idx = idx.to(tl.int32)
    keep = mask_keep(mask_ptr, idx, in_range, mask_inner, mask_period,
                     MASK_MODE)
    x0, x1, x2 = load_inputs(x0_ptr, x1_ptr, x2_ptr, idx, keep, MATH, N_INPUTS)
    noise = x0
    if HAS_NOISE:
        noise = noise_tile(seed, counters, cols).to(MATH)
    c_base = row * NCOLS
    row_ok = row >= 0  # scalar "true" for the scalar coefficient loads
    if RESULT == 0:
        value = combine(c_ptr, c_base, row_ok, x0, x1, x2, noise,
                        N_INPUTS, HAS_NOISE, HAS_BIAS)
        if POWER == 2:
            value = value * value
        value = tl.where(keep, value, 0.0)
        tl.store(partial_ptr + pid, tl.sum(value))
    else:
        if WEIGHT == 0:
            weight = tl.where(keep, 1.0, 0.0).to(MATH)
        elif WEIGHT == 1:
            weight = tl.load(w_ptr + idx, mask=keep, other=0).to(MATH)
        else:
            weight = combine(c_ptr, c_base, row_ok, x0, x1, x2, noise,
                             N_INPUTS, HAS_NOISE, HAS_BIAS)
        weight = tl.where(keep, weight, 0.0)
        out = partial_ptr + pid * NCOLS
        tl.store(out, tl.sum(weight * x0))
        if N_INPUTS > 1:
            tl.store(out + 1, tl.sum(weight * x1))
        if N_INPUTS > 2:
            tl.store(out + 2, tl.sum(weight * x2))
        if HAS_NOISE:
            tl.store(out + N_INPUTS, tl.sum(weight * noise))
        if HAS_BIAS:
            tl.store(out + N_INPUTS + HAS_NOISE, tl.sum(weight))


@triton.jit
def sum_partials_kernel(partial_ptr, out_ptr, blocks_per_row, n_cols,
                        BLOCK: tl.constexpr):
    """out[row, col] = sum over blocks of partials[row, block, col], in a
    fixed order (strided accumulation, then one tree reduction)."""
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_cols
    col = pid % n_cols
    acc = tl.zeros([BLOCK], dtype=out_ptr.dtype.element_ty)
    for start in range(0, blocks_per_row, BLOCK):
        blocks = start + tl.arange(0, BLOCK)
        acc += tl.load(partial_ptr + (row * blocks_per_row + blocks) * n_cols + col,
                       mask=blocks < blocks_per_row, other=0)
    tl.store(out_ptr + pid, tl.sum(acc))
