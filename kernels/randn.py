"""Counter-based normal noise (SPEC §9): element i = noise[offset + i]."""
from __future__ import annotations

import triton
import triton.language as tl

from .common import noise_tile


# seed and offsets are not specialised (divisible by 16, equal to 1, 32/64
# bit): one compiled kernel serves every seed, not one per seed class
@triton.jit(do_not_specialize=["seed", "offset", "first_counter"])
def randn_kernel(out_ptr, seed, offset, first_counter, numel,
                 COUNTERS: tl.constexpr):
    """Writes noise[offset + i] for i < numel. The grid covers the counters
    first_counter = offset // 4 .. (offset + numel - 1) // 4."""
    pid = tl.program_id(0).to(tl.int64)
    counters = first_counter + pid * COUNTERS + tl.arange(0, COUNTERS)[:, None]
    cols = tl.arange(0, 4)[None, :]
    idx = counters * 4 + cols - offset
    in_range = (idx >= 0) & (idx < numel)
    noise = noise_tile(seed, counters, cols)
    tl.store(out_ptr + idx, noise.to(out_ptr.dtype.element_ty), mask=in_range)
