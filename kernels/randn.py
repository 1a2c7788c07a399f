"""Counter-based normal noise (docs/math.md, "Counter-based noise"):
element i = noise[offset + i]."""
from __future__ import annotations

import triton
import triton.language as tl

from .common import (aligned_tile, elementwise_frame, general_column,
                     general_rows, launch_seed, noise_tile, normals, pick)


# seed and offsets are not specialised (divisible by 16, equal to 1, 32/64
# bit): one compiled kernel serves every seed, not one per seed class
@triton.jit(do_not_specialize=["seed", "offset", "first_counter"])
def randn_kernel(out_ptr, seed, offset, first_counter, numel,
                 ALIGNED: tl.constexpr, INDEX_64: tl.constexpr,
                 COUNTERS: tl.constexpr, SUB: tl.constexpr,
                 SEED_IN_MEMORY: tl.constexpr):
    """Writes noise[offset + i] for i < numel. The grid covers the counters
    first_counter = offset // 4 .. (offset + numel - 1) // 4, COUNTERS per
    program in sub-tiles of SUB. ALIGNED: offset and numel are multiples
    of 4 and elements at most 4 bytes (4-wide stores); otherwise one store
    per column of the tile."""
    seed = launch_seed(seed, SEED_IN_MEMORY)
    first, tile_start, shift, span = elementwise_frame(
        first_counter, offset, numel, COUNTERS, ALIGNED, INDEX_64)
    for k in range(0, COUNTERS, SUB):
        if ALIGNED:
            counters, cols, off, pos, in_range = aligned_tile(first, span, k,
                                                              SUB)
            noise = noise_tile(seed, counters, cols)
            tl.store(out_ptr + (tile_start + off),
                     noise.to(out_ptr.dtype.element_ty),
                     mask=in_range)
        else:
            rows, counters, pos_row = general_rows(first, shift, k, SUB)
            n0, n1, n2, n3 = normals(seed, counters)
            for j in tl.static_range(4):
                pos, in_range = general_column(shift, span, rows, j)
                tl.store(out_ptr + (tile_start + pos),
                         pick(j, n0, n1, n2, n3).to(out_ptr.dtype.element_ty),
                         mask=in_range)
