"""The per-row affine step, element-wise (SPEC §7).

out[i] = mask[i] * (sum_k c[r, k] x_k[i] + c[r, K] xi[offset + i] + c[r, K+1]),
r = i // per_row, with an optional second output from a second coefficient
table that shares the loads and the noise. The grid tiles the flat tensor by
Philox counters (see :mod:`.common`), so row boundaries fall anywhere inside a
tile: the coefficients are gathered per element (a tiny table, cache-resident).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import combine, load_inputs, mask_keep, noise_tile


# seed and offsets are not specialised (divisible by 16, equal to 1, 32/64
# bit): one compiled kernel serves every seed, not one per seed class
@triton.jit(do_not_specialize=["seed", "offset", "first_counter"])
def affine_kernel(x0_ptr, x1_ptr, x2_ptr, c_ptr, c2_ptr, mask_ptr,
                  out_ptr, out2_ptr,
                  seed, offset, first_counter, numel, per_row,
                  mask_inner, mask_period,
                  N_INPUTS: tl.constexpr, HAS_NOISE: tl.constexpr,
                  HAS_BIAS: tl.constexpr, HAS_OUT2: tl.constexpr,
                  MASK_MODE: tl.constexpr, INDEX_64: tl.constexpr,
                  COUNTERS: tl.constexpr):
    NCOLS: tl.constexpr = N_INPUTS + HAS_NOISE + HAS_BIAS
    MATH: tl.constexpr = c_ptr.dtype.element_ty  # float32, or float64
    pid = tl.program_id(0).to(tl.int64)  # 64-bit indices throughout
    counters = first_counter + pid * COUNTERS + tl.arange(0, COUNTERS)[:, None]
    cols = tl.arange(0, 4)[None, :]
    idx = counters * 4 + cols - offset
    in_range = (idx >= 0) & (idx < numel)
    if not INDEX_64:  # int32 divisions below are several times cheaper
        idx = idx.to(tl.int32)
    keep = mask_keep(mask_ptr, idx, in_range, mask_inner, mask_period,
                     MASK_MODE)
    x0, x1, x2 = load_inputs(x0_ptr, x1_ptr, x2_ptr, idx, keep, MATH, N_INPUTS)
    noise = x0
    if HAS_NOISE:
        noise = noise_tile(seed, counters, cols).to(MATH)
    c_base = (idx // per_row) * NCOLS
    out = combine(c_ptr, c_base, in_range, x0, x1, x2, noise,
                  N_INPUTS, HAS_NOISE, HAS_BIAS)
    out = tl.where(keep, out, 0.0)
    tl.store(out_ptr + idx, out.to(out_ptr.dtype.element_ty), mask=in_range)
    if HAS_OUT2:
        out2 = combine(c2_ptr, c_base, in_range, x0, x1, x2, noise,
                       N_INPUTS, HAS_NOISE, HAS_BIAS)
        out2 = tl.where(keep, out2, 0.0)
        tl.store(out2_ptr + idx, out2.to(out2_ptr.dtype.element_ty),
                 mask=in_range)
