"""The per-row affine step, element-wise (docs/math.md, "The kernels").

out[i] = mask[i] * (sum_k c[r, k] x_k[i] + c[r, K] xi[offset + i] + c[r, K+1]),
r = i // per_row, with an optional second output from a second coefficient
table that shares the loads and the noise. The grid tiles the flat tensor by
Philox counters (see :mod:`.common`), so row boundaries fall anywhere inside
a tile. ``ROW_PAIR`` (rows at least a tile long): a tile meets two rows at
most, r_t and r_t + 1, and an element's row is one compare with the
boundary; 1: both rows' coefficients are scalars loaded once per program
and a select picks them; 2 (two tables, i.e. a second output: the scalars
would cost registers): each row of the tile gathers its row's
coefficients. 0 (short rows): the row comes from one division per counter
row and compares per element, and the coefficients are gathered.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import (aligned_tile, coeff_row_state, combine_rows,
                     elementwise_frame, general_column, general_rows,
                     land_keep, launch_seed, load_inputs, mask_offset,
                     mask_row_state, mask_setup, noise_tile, normals, pick,
                     row_coeffs)


@triton.jit
def _affine_block(x0_ptr, x1_ptr, x2_ptr, c_t, c2_t, mask_ptr, out_ptr,
                  out2_ptr, idx, in_range, noise, cols, m, crow,
                  a0, a1, a2, an, ab, b0, b1, b2, bn, bb,
                  d0, d1, d2, dn, db, e0, e1, e2, en, eb,
                  N_INPUTS: tl.constexpr, HAS_NOISE: tl.constexpr,
                  HAS_BIAS: tl.constexpr, HAS_OUT2: tl.constexpr,
                  MASK_MODE: tl.constexpr, ALIGNED: tl.constexpr,
                  ROW_PAIR: tl.constexpr):
    """Mask, loads, combinations and stores of one block of elements at
    tensor indices ``idx`` (mask indices ``m``, coefficient rows ``crow``
    after the tile's first): an aligned [SUB, 4] tile, or one column ([SUB])
    of a general one."""
    MATH: tl.constexpr = c_t.dtype.element_ty  # float32, or float64
    keep, load_mask = land_keep(mask_ptr, m, cols, in_range, MASK_MODE,
                                ALIGNED)
    x0, x1, x2 = load_inputs(x0_ptr, x1_ptr, x2_ptr, idx, keep, load_mask,
                             MATH, N_INPUTS, MASK_MODE, ALIGNED)
    if HAS_NOISE:
        noise = noise.to(MATH)
    out = combine_rows(c_t, crow, in_range, a0, a1, a2, an, ab,
                       b0, b1, b2, bn, bb, x0, x1, x2, noise,
                       N_INPUTS, HAS_NOISE, HAS_BIAS, ROW_PAIR)
    tl.store(out_ptr + idx, tl.where(keep, out, 0.0).to(out_ptr.dtype.element_ty),
             mask=in_range)
    if HAS_OUT2:
        out2 = combine_rows(c2_t, crow, in_range, d0, d1, d2, dn, db,
                            e0, e1, e2, en, eb, x0, x1, x2, noise,
                            N_INPUTS, HAS_NOISE, HAS_BIAS, ROW_PAIR)
        tl.store(out2_ptr + idx,
                 tl.where(keep, out2, 0.0).to(out2_ptr.dtype.element_ty),
                 mask=in_range)


# seed and offsets are not specialised (divisible by 16, equal to 1, 32/64
# bit): one compiled kernel serves every seed, not one per seed class
@triton.jit(do_not_specialize=["seed", "offset", "first_counter"])
def affine_kernel(x0_ptr, x1_ptr, x2_ptr, c_ptr, c2_ptr, mask_ptr,
                  out_ptr, out2_ptr,
                  seed, offset, first_counter, numel, per_row,
                  mask_inner, mask_period,
                  N_INPUTS: tl.constexpr, HAS_NOISE: tl.constexpr,
                  HAS_BIAS: tl.constexpr, HAS_OUT2: tl.constexpr,
                  MASK_MODE: tl.constexpr, ALIGNED: tl.constexpr,
                  ROW_PAIR: tl.constexpr, INDEX_64: tl.constexpr,
                  COUNTERS: tl.constexpr, SUB: tl.constexpr,
                  SEED_IN_MEMORY: tl.constexpr):
    seed = launch_seed(seed, SEED_IN_MEMORY)
    NCOLS: tl.constexpr = N_INPUTS + HAS_NOISE + HAS_BIAS
    first, tile_start, shift, span = elementwise_frame(
        first_counter, offset, numel, COUNTERS, ALIGNED, INDEX_64)
    # once per program: the mask reference, the coefficient tables advanced
    # to the tile's first row, the next row's boundary
    m_ref, s1, s2, s3 = mask_setup(tile_start, mask_inner, mask_period,
                                   MASK_MODE)
    r_t = tile_start // per_row
    c_t = c_ptr + r_t * NCOLS
    c2_t = c2_ptr + r_t * NCOLS
    next_row = tl.minimum((r_t + 1) * per_row - tile_start, span).to(tl.int32)
    rest_t = 0
    if ROW_PAIR == 0:  # rows shorter than the tile: the rest fits 32 bits
        rest_t = (tile_start - r_t * per_row).to(tl.int32)
    a0, a1, a2, an, ab = 0.0, 0.0, 0.0, 0.0, 0.0
    b0, b1, b2, bn, bb = a0, a1, a2, an, ab
    d0, d1, d2, dn, db = a0, a1, a2, an, ab
    e0, e1, e2, en, eb = a0, a1, a2, an, ab
    if ROW_PAIR == 1:
        has_next = next_row < span
        a0, a1, a2, an, ab = row_coeffs(c_t, 0, True, N_INPUTS, HAS_NOISE,
                                        HAS_BIAS)
        b0, b1, b2, bn, bb = row_coeffs(c_t, NCOLS, has_next, N_INPUTS,
                                        HAS_NOISE, HAS_BIAS)
        if HAS_OUT2:
            d0, d1, d2, dn, db = row_coeffs(c2_t, 0, True, N_INPUTS,
                                            HAS_NOISE, HAS_BIAS)
            e0, e1, e2, en, eb = row_coeffs(c2_t, NCOLS, has_next, N_INPUTS,
                                            HAS_NOISE, HAS_BIAS)
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
            if ROW_PAIR == 0:
                crow, h1, h2, h3 = coeff_row_state(pos, per_row, rest_t)
            else:
                crow = (pos >= next_row).to(tl.int32)
            _affine_block(x0_ptr, x1_ptr, x2_ptr, c_t, c2_t, mask_ptr,
                          out_ptr, out2_ptr, tile_start + off, in_range,
                          noise, cols, tl.multiple_of(m_ref + m, [4, 4]),
                          crow,
                          a0, a1, a2, an, ab, b0, b1, b2, bn, bb,
                          d0, d1, d2, dn, db, e0, e1, e2, en, eb,
                          N_INPUTS, HAS_NOISE, HAS_BIAS, HAS_OUT2, MASK_MODE,
                          ALIGNED, ROW_PAIR)
        else:
            rows, counters, pos_row = general_rows(first, shift, k, SUB)
            q, g1, g2, t = mask_row_state(pos_row, mask_inner, mask_period,
                                          s1, MASK_MODE)
            cq, h1, h2, h3 = q, q, q, q
            if ROW_PAIR == 0:
                cq, h1, h2, h3 = coeff_row_state(pos_row, per_row, rest_t)
            n0, n1, n2, n3 = 0.0, 0.0, 0.0, 0.0
            if HAS_NOISE:
                n0, n1, n2, n3 = normals(seed, counters)
            for j in tl.static_range(4):
                pos, in_range = general_column(shift, span, rows, j)
                m = pos
                if MASK_MODE != 0:
                    m = mask_offset(pos, pos - pos_row, mask_inner, s1, s2,
                                    q, g1, g2, t, MASK_MODE)
                if ROW_PAIR == 0:
                    d = pos - pos_row
                    crow = cq + ((d >= h1).to(tl.int32) + (d >= h2).to(tl.int32)
                                 + (d >= h3).to(tl.int32))
                else:
                    crow = (pos >= next_row).to(tl.int32)
                _affine_block(x0_ptr, x1_ptr, x2_ptr, c_t, c2_t, mask_ptr,
                              out_ptr, out2_ptr, tile_start + pos, in_range,
                              pick(j, n0, n1, n2, n3), None, m_ref + m, crow,
                              a0, a1, a2, an, ab, b0, b1, b2, bn, bb,
                              d0, d1, d2, dn, db, e0, e1, e2, en, eb,
                              N_INPUTS, HAS_NOISE, HAS_BIAS, HAS_OUT2,
                              MASK_MODE, ALIGNED, ROW_PAIR)
