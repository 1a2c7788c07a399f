"""Pieces shared by the Triton kernels: the noise tile, the mask lookup, the
per-row affine combination and the launch configurations.

Tiling (every kernel): a program owns ``COUNTERS`` consecutive Philox
counters, i.e. a ``[COUNTERS, 4]`` tile of elements. Element (c, j) of the
tile is the global noise index g = 4 c + j (SPEC §9), the tensor index
i = g - offset, masked to the range the program owns. One ``tl.randn4x`` call
per counter yields the four normals of its row of the tile, so each Philox
call feeds four elements.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

#: True when Triton runs kernels in its NumPy interpreter (decided by Triton
#: when the kernels are decorated, i.e. when this package is imported).
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Counters per program under the interpreter: one big tile per program keeps
# the (per-program, Python-level) interpreter overhead low.
INTERPRETER_COUNTERS = 1024


def elementwise_launch(numel: int):
    """(COUNTERS, num_warps) of the element-wise kernels (affine, randn): a
    pure function of the size, not timing-based autotuning, which would
    benchmark with host synchronisations on the first call of every size,
    cannot run inside CUDA-graph capture, and keyed on the size alone would
    share one variant's choice with another. Every configuration gives each
    thread whole counters (COUNTERS >= 32 * num_warps), so no Philox counter
    is computed twice. Small tensors take small tiles (more programs for the
    SMs), large ones four counters (16 elements) per thread."""
    if INTERPRETING:
        return INTERPRETER_COUNTERS, 4
    if numel <= 4 * 128 * 1024:
        return 128, 4
    return 512, 4


def reduction_launch(counters_per_row: int):
    """(COUNTERS, num_warps) of the row reductions, a pure function of the
    shape. Not autotuned on purpose: the block size fixes the summation order,
    and a timing-based choice could differ between processes, which would
    break bitwise reproducibility of the loss."""
    if INTERPRETING:
        return INTERPRETER_COUNTERS, 4
    counters = min(1024, max(16, triton.next_power_of_2(max(counters_per_row, 1))))
    return counters, (4 if counters <= 256 else 8)


def needs_int64_index(numel: int) -> bool:
    """Whether tile indices of a tensor of ``numel`` elements can leave the
    int32 range (tiles overhang the end by at most 4 * COUNTERS elements).
    Counters are int64 always; element indices only when needed, because
    the mask and row lookups divide them."""
    return numel + 2 ** 16 >= 2 ** 31


@triton.jit
def noise_tile(seed, counters, cols):
    """Normals of the tile: counters [C, 1] int64, cols [1, 4] -> [C, 4]
    float32, element (c, j) = component j of randn4x(seed, c)."""
    n0, n1, n2, n3 = tl.randn4x(seed, counters)
    return tl.where(cols == 0, n0,
                    tl.where(cols == 1, n1, tl.where(cols == 2, n2, n3)))


@triton.jit
def mask_keep(mask_ptr, idx, in_range, mask_inner, mask_period,
              MASK_MODE: tl.constexpr):
    """Valid elements of the tile. MASK_MODE 0: no mask; 1: the mask has the
    data's layout (index i); 2: the data is (O, M, I) and the mask (O, 1, I),
    mask index (i // (M I)) I + i % I with period = M I, inner = I."""
    keep = in_range
    if MASK_MODE != 0:
        if MASK_MODE == 1:
            mask_idx = idx
        else:
            mask_idx = (idx // mask_period) * mask_inner + idx % mask_inner
        value = tl.load(mask_ptr + mask_idx, mask=in_range, other=0)
        keep = in_range & (value != 0)
    return keep


@triton.jit
def load_inputs(x0_ptr, x1_ptr, x2_ptr, idx, keep, MATH: tl.constexpr,
                N_INPUTS: tl.constexpr):
    """The up to three input tiles in the math dtype; masked positions are
    not read (0). Unused inputs come back as x0 (never used by callers)."""
    x0 = tl.load(x0_ptr + idx, mask=keep, other=0).to(MATH)
    x1 = x0
    x2 = x0
    if N_INPUTS > 1:
        x1 = tl.load(x1_ptr + idx, mask=keep, other=0).to(MATH)
    if N_INPUTS > 2:
        x2 = tl.load(x2_ptr + idx, mask=keep, other=0).to(MATH)
    return x0, x1, x2


@triton.jit
def combine(c_ptr, c_base, c_mask, x0, x1, x2, noise,
            N_INPUTS: tl.constexpr, HAS_NOISE: tl.constexpr,
            HAS_BIAS: tl.constexpr):
    """sum_k c[k] x_k + c[K] noise + c[K+1] with the coefficients of row
    c_base // NCOLS (c_base: one offset per element, or a scalar)."""
    acc = tl.load(c_ptr + c_base, mask=c_mask, other=0) * x0
    if N_INPUTS > 1:
        acc += tl.load(c_ptr + c_base + 1, mask=c_mask, other=0) * x1
    if N_INPUTS > 2:
        acc += tl.load(c_ptr + c_base + 2, mask=c_mask, other=0) * x2
    if HAS_NOISE:
        acc += tl.load(c_ptr + c_base + N_INPUTS, mask=c_mask, other=0) * noise
    if HAS_BIAS:
        acc += tl.load(c_ptr + c_base + N_INPUTS + HAS_NOISE, mask=c_mask,
                       other=0)
    return acc
