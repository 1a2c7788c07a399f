"""Per-row masked reductions of the affine combination, deterministic.

Stage 1 (:func:`row_reduce_kernel`): program p = (row, block) owns
``COUNTERS`` Philox counters of one row (the row's elements are
[row * per_row, (row + 1) * per_row); a counter straddling two rows is
computed by both programs, each keeping its own elements). It walks them in
sub-tiles of ``SUB`` counters (one counter per thread and iteration, so the
registers do not grow with the block), keeps per-thread partial sums (one
per counter row, summed in a fixed order: the 4 elements of the row, then
the iterations), and writes their tree sum per result column to
``partials[row, block, :]``.
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

from .common import (aligned_tile, combine, general_column, general_rows,
                     land_keep, launch_seed, load_inputs, load_masked,
                     mask_offset, mask_row_state, mask_setup, noise_tile,
                     normals, pick, program_frame, row_coeffs)


@triton.jit
def _row_sum(v, ALIGNED: tl.constexpr):
    """Per-counter sums of a block: over the 4 elements of each row of an
    aligned tile (in-thread), a column as it is."""
    if ALIGNED:
        v = tl.sum(v, axis=1)
    return v


@triton.jit
def _reduce_block(x0_ptr, x1_ptr, x2_ptr, w_ptr, mask_ptr, idx, m, in_range,
                  noise, cols, c0, c1, c2, cn, cb,
                  N_INPUTS: tl.constexpr, HAS_NOISE: tl.constexpr,
                  HAS_BIAS: tl.constexpr, MASK_MODE: tl.constexpr,
                  RESULT: tl.constexpr, POWER: tl.constexpr,
                  WEIGHT: tl.constexpr, ALIGNED: tl.constexpr,
                  MATH: tl.constexpr):
    """The per-counter ([SUB]) terms of the result columns for one block of
    elements at tensor indices ``idx`` (mask indices ``m``): an aligned
    [SUB, 4] tile or one column of a general one."""
    keep, load_mask = land_keep(mask_ptr, m, cols, in_range, MASK_MODE,
                                ALIGNED)
    x0, x1, x2 = load_inputs(x0_ptr, x1_ptr, x2_ptr, idx, keep, load_mask,
                             MATH, N_INPUTS, MASK_MODE, ALIGNED)
    if HAS_NOISE:
        noise = noise.to(MATH)
    t1 = 0.0
    t2 = 0.0
    tn = 0.0
    tb = 0.0
    if RESULT == 0:
        value = combine(c0, c1, c2, cn, cb, x0, x1, x2, noise,
                        N_INPUTS, HAS_NOISE, HAS_BIAS)
        if POWER == 2:
            value = value * value
        t0 = _row_sum(tl.where(keep, value, 0.0), ALIGNED)
    else:
        if WEIGHT == 0:
            weight = tl.where(keep, 1.0, 0.0).to(MATH)
        elif WEIGHT == 1:
            weight = load_masked(w_ptr, idx, keep, load_mask, MATH,
                                 MASK_MODE, ALIGNED)
        else:
            weight = combine(c0, c1, c2, cn, cb, x0, x1, x2, noise,
                             N_INPUTS, HAS_NOISE, HAS_BIAS)
        weight = tl.where(keep, weight, 0.0)
        t0 = _row_sum(weight * x0, ALIGNED)
        if N_INPUTS > 1:
            t1 = _row_sum(weight * x1, ALIGNED)
        if N_INPUTS > 2:
            t2 = _row_sum(weight * x2, ALIGNED)
        if HAS_NOISE:
            tn = _row_sum(weight * noise, ALIGNED)
        if HAS_BIAS:
            tb = _row_sum(weight, ALIGNED)
    return t0, t1, t2, tn, tb


@triton.jit(do_not_specialize=["seed", "offset"])
def row_reduce_kernel(x0_ptr, x1_ptr, x2_ptr, c_ptr, w_ptr, mask_ptr,
                      partial_ptr,
                      seed, offset, per_row, blocks_per_row,
                      mask_inner, mask_period,
                      N_INPUTS: tl.constexpr, HAS_NOISE: tl.constexpr,
                      HAS_BIAS: tl.constexpr, MASK_MODE: tl.constexpr,
                      RESULT: tl.constexpr, POWER: tl.constexpr,
                      WEIGHT: tl.constexpr, ALIGNED: tl.constexpr,
                      INDEX_64: tl.constexpr, COUNTERS: tl.constexpr,
                      SUB: tl.constexpr, SEED_IN_MEMORY: tl.constexpr):
    seed = launch_seed(seed, SEED_IN_MEMORY)
    NCOLS: tl.constexpr = N_INPUTS + HAS_NOISE + HAS_BIAS
    MATH: tl.constexpr = c_ptr.dtype.element_ty
    pid = tl.program_id(0)
    row = pid // blocks_per_row
    block = pid - row * blocks_per_row
    if INDEX_64:
        row_start = row.to(tl.int64) * per_row
    else:
        row_start = row * per_row
    # the row's coefficients: scalars, loaded once per program
    c0, c1, c2, cn, cb = row_coeffs(c_ptr, row * NCOLS, row >= 0,
                                    N_INPUTS, HAS_NOISE, HAS_BIAS)
    if ALIGNED:  # offset and row_start are multiples of 4
        first = offset // 4 + row_start.to(tl.int64) // 4 \
            + block.to(tl.int64) * COUNTERS
        start = row_start + block * (4 * COUNTERS)
        tile_start = start
    else:
        first = (offset.to(tl.int64) + row_start) // 4 \
            + block.to(tl.int64) * COUNTERS
        start = first * 4 - offset  # >= row_start - 3
        if not INDEX_64:
            start = start.to(tl.int32)
        tile_start = tl.maximum(start, row_start)
    first, shift, span = program_frame(first, start, tile_start,
                                       row_start + per_row)
    m_ref, s1, s2, s3 = mask_setup(tile_start, mask_inner, mask_period,
                                   MASK_MODE)
    # per-thread partial sums, one per counter row of the sub-tile
    acc0 = tl.zeros([SUB], dtype=MATH)
    acc1 = tl.zeros([SUB], dtype=MATH)
    acc2 = tl.zeros([SUB], dtype=MATH)
    accn = tl.zeros([SUB], dtype=MATH)
    accb = tl.zeros([SUB], dtype=MATH)
    for k in range(0, COUNTERS, SUB):
        if ALIGNED:
            counters, cols, off, pos, in_range = aligned_tile(first, span, k,
                                                              SUB)
            noise = 0.0
            if HAS_NOISE:
                noise = noise_tile(seed, counters, cols)
            m = pos
            if MASK_MODE != 0:
                q, g1, g2, t = mask_row_state(pos, mask_inner, mask_period,
                                              s1, MASK_MODE)
                m = mask_offset(pos, 0, mask_inner, s1, s2, q, g1, g2, t,
                                MASK_MODE)
            t0, t1, t2, tn, tb = _reduce_block(
                x0_ptr, x1_ptr, x2_ptr, w_ptr, mask_ptr, tile_start + off,
                tl.multiple_of(m_ref + m, [4, 4]), in_range, noise, cols,
                c0, c1, c2, cn, cb, N_INPUTS, HAS_NOISE, HAS_BIAS, MASK_MODE,
                RESULT, POWER, WEIGHT, ALIGNED, MATH)
            acc0 += t0
            acc1 += t1
            acc2 += t2
            accn += tn
            accb += tb
        else:
            rows, counters, pos_row = general_rows(first, shift, k, SUB)
            q, g1, g2, t = mask_row_state(pos_row, mask_inner, mask_period,
                                          s1, MASK_MODE)
            n0, n1, n2, n3 = 0.0, 0.0, 0.0, 0.0
            if HAS_NOISE:
                n0, n1, n2, n3 = normals(seed, counters)
            for j in tl.static_range(4):
                pos, in_range = general_column(shift, span, rows, j)
                m = pos
                if MASK_MODE != 0:
                    m = mask_offset(pos, pos - pos_row, mask_inner, s1, s2,
                                    q, g1, g2, t, MASK_MODE)
                t0, t1, t2, tn, tb = _reduce_block(
                    x0_ptr, x1_ptr, x2_ptr, w_ptr, mask_ptr, tile_start + pos,
                    m_ref + m, in_range,
                    pick(j, n0, n1, n2, n3), None, c0, c1, c2, cn, cb,
                    N_INPUTS, HAS_NOISE, HAS_BIAS, MASK_MODE, RESULT, POWER,
                    WEIGHT, ALIGNED, MATH)
                acc0 += t0
                acc1 += t1
                acc2 += t2
                accn += tn
                accb += tb
    if RESULT == 0:
        tl.store(partial_ptr + pid, tl.sum(acc0))
    else:
        out = partial_ptr + pid * NCOLS
        tl.store(out, tl.sum(acc0))
        if N_INPUTS > 1:
            tl.store(out + 1, tl.sum(acc1))
        if N_INPUTS > 2:
            tl.store(out + 2, tl.sum(acc2))
        if HAS_NOISE:
            tl.store(out + N_INPUTS, tl.sum(accn))
        if HAS_BIAS:
            tl.store(out + N_INPUTS + HAS_NOISE, tl.sum(accb))


@triton.jit
def sum_partials_kernel(partial_ptr, out_ptr, blocks_per_row, n_cols,
                        BLOCK: tl.constexpr, ITERS: tl.constexpr):
    """out[row, col] = sum over blocks of partials[row, block, col], in a
    fixed order (strided accumulation over ITERS = cdiv(blocks_per_row,
    BLOCK) steps, then one tree reduction). The trip count is a constexpr:
    no loop bound is a runtime value (Triton 3.6's interpreter cannot take
    one with NumPy >= 2.4)."""
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_cols
    col = pid % n_cols
    acc = tl.zeros([BLOCK], dtype=out_ptr.dtype.element_ty)
    for it in range(ITERS):
        blocks = it * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(partial_ptr + (row * blocks_per_row + blocks) * n_cols + col,
                       mask=blocks < blocks_per_row, other=0)
    tl.store(out_ptr + pid, tl.sum(acc))
