"""Pieces shared by the Triton kernels: the noise, the tiles, the mask
lookup, the coefficient rows, the affine combination and the launch
configurations (pure functions of the shape). kernels/README.md describes
the design and its measurements.

Tiling (every kernel): a program owns ``COUNTERS`` consecutive Philox
counters, i.e. a ``[COUNTERS, 4]`` tile of elements. Element (c, j) of the
tile is the global noise index g = 4 c + j (docs/math.md, "Counter-based
noise"), the tensor index i = g - offset, masked to the range the program
owns. One Philox call per
counter yields the four normals of its row of the tile. A program walks
its tile in sub-tiles of ``SUB`` counters, one counter per thread and
iteration.

Two index forms (constexpr ``ALIGNED``, chosen by :func:`tile_flags`):

- aligned (``offset % 4 == 0``, rows and mask blocks of a multiple of 4
  elements, elements of at most 4 bytes): a row of the tile is 4
  consecutive tensor elements starting at a multiple of 4 and the range
  mask is one bit per row, so every load and store is a 4-wide vector (16
  bytes for float32) and each thread owns whole rows: the four normals of
  a Philox call stay in its registers.
- general: any offset; the tile is processed column by column (element j
  of every counter), scalar loads and stores, still without exchanging
  normals between threads.

Masked (land) elements are never part of a result: loads are masked by the
range (and, aligned, by "any valid element in the row", which keeps loads
vectorised and still skips all-land rows), and every loaded value is
replaced by 0 where the land mask says invalid, before any arithmetic, so a
NaN or Inf under land never reaches an output or a sum.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl
from triton.language.random import uint_to_uniform_float

#: True when Triton runs kernels in its NumPy interpreter (decided by Triton
#: when the kernels are decorated, i.e. when this package is imported).
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Counters per program under the interpreter: one big tile per program keeps
# the (per-program, Python-level) interpreter overhead low.
INTERPRETER_COUNTERS = 1024

#: counters per iteration of a program's loop under the interpreter: one
#: iteration (tests/test_kernels_aot.py runs several by patching the launch)
INTERPRETER_SUB = INTERPRETER_COUNTERS


# ------------------------------------------------------ launch configuration
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


def sub_counters(counters: int, num_warps: int) -> int:
    """Counters per iteration of a program's loop (constexpr ``SUB``, every
    kernel): one counter (4 elements) per thread and iteration, so the
    registers do not grow with ``COUNTERS``, while what depends on the
    program only is computed once per ``COUNTERS``."""
    if INTERPRETING:
        return min(counters, INTERPRETER_SUB)
    return min(counters, 32 * num_warps)


def needs_int64_index(numel: int) -> bool:
    """Whether tile indices of a tensor of ``numel`` elements can leave the
    int32 range (tiles overhang the end by at most 4 * COUNTERS elements).
    Counters are int64 always; element indices only when needed, because
    the mask and row lookups divide them."""
    return numel + 2 ** 16 >= 2 ** 31


def tile_flags(counters: int, offset: int, per_row: int, mask_mode: int,
               mask_inner: int, mask_period: int = 1, row_pair: bool = True,
               itemsize: int = 4, tables: int = 1):
    """The constexpr tile flags of a launch, a pure function of the shape:

    - ``ALIGNED``: offset % 4 == 0, per_row % 4 == 0 and (for a broadcast
      mask) inner % 4 == 0: counters never straddle rows, mask periods or
      the end, so rows of the tile are aligned 4-vectors; and the data
      tensors have elements of at most 4 bytes (``itemsize``): 4 float64
      are 32 bytes, two vectors, which Triton splits between two threads
      and then exchanges the normals through shared memory.
    - ``ROW_PAIR`` (affine): a tile (4 * COUNTERS consecutive elements)
      meets at most two coefficient rows (per_row >= 4 * COUNTERS): 1, the
      coefficients of both rows are scalars loaded once per program, and a
      select per element picks one; 2 (two coefficient tables, i.e. a
      second output: twice as many scalars would cost registers), each
      row of the tile gathers its row's coefficients by index
      r0 + (row past the boundary). Both instead of a division and gathers
      per element.
    - ``MASK_MODE`` of a broadcast (O, 1, I) mask (mode 2 of
      kernel_mask_layout), by the sizes I and P = M I against the tile:
      2: P < the tile, 3: I >= the tile (compares only), 4: I < the tile
      <= P (a division by I per counter row). See the mask section below.
    """
    tile = 4 * counters
    aligned = (offset % 4 == 0 and per_row % 4 == 0 and itemsize <= 4
               and (mask_mode != 2 or mask_inner % 4 == 0))
    if mask_mode == 2:
        mask_mode = 3 if mask_inner >= tile else (4 if mask_period >= tile else 2)
    flags = dict(ALIGNED=int(aligned), MASK_MODE=mask_mode)
    if row_pair:
        flags["ROW_PAIR"] = (1 if tables == 1 else 2) if per_row >= tile else 0
    return flags


# ---------------------------------------------------------------- the noise
# Cody-Waite split of pi/2: C1 and C2 end in three zero bits, so j * C1 and
# j * C2 are exact for the quadrants j <= 4 of [0, 2 pi) (also where an fma
# is evaluated as a product and a sum, as Triton 3.6's interpreter does).
_PIO2_1 = tl.constexpr(1.570796012878418)  # 0x3fc90fd8
_PIO2_2 = tl.constexpr(3.139164164167596e-07)  # 0x34a88858
_PIO2_3 = tl.constexpr(6.223371969669989e-14)  # 0x298c234c
_TWO_OVER_PI = tl.constexpr(0.6366197466850281)  # 0x3f22f983
_ROUND = tl.constexpr(12582912.0)  # 1.5 * 2**23: x + _ROUND - _ROUND = rint(x)


@triton.jit
def sincos(x):
    """(sin x, cos x) in float32 for 0 <= x < 2**21 (here x in [0, 2 pi)),
    with one argument reduction for both: x = j pi/2 + r (three-part
    Cody-Waite, exact here), then the CUDA math library's minimax
    polynomials of sin and cos on [-pi/4, pi/4] (sinf/cosf, whose
    libdevice versions reduce twice and guard a Payne-Hanek path for
    |x| >= 105615 that Box-Muller angles never take). Every step is an
    explicit fma, so the GPU and the interpreter evaluate the same
    expression. Accuracy: see kernels/README.md (exhaustive check)."""
    t = tl.fma(x, _TWO_OVER_PI, 0.0)         # rounded once: no contraction
    big = tl.fma(t, 1.0, _ROUND)             # rint(t) in the low mantissa bits
    quadrant = big.to(tl.int32, bitcast=True)
    j = big - _ROUND
    r = tl.fma(j, -_PIO2_1, x)
    r = tl.fma(j, -_PIO2_2, r)
    r = tl.fma(j, -_PIO2_3, r)
    r2 = r * r
    ps = tl.fma(r2, -1.9574658654164523e-4, 8.33270326256752e-3)
    ps = tl.fma(ps, r2, -0.16666662693023682)
    pc = tl.fma(r2, 2.4279579520225525e-05, -0.0013887860113754868507)
    pc = tl.fma(pc, r2, 0.041666727513074875)
    pc = tl.fma(pc, r2, -0.4999999701976776)
    sin_r = tl.fma(tl.fma(r2, r, 0.0), ps, r)
    cos_r = tl.fma(r2, pc, 1.0)
    odd = (quadrant & 1) != 0
    sin = tl.where(odd, cos_r, sin_r)
    cos = tl.where(odd, sin_r, cos_r)
    sin = tl.where((quadrant & 2) != 0, -sin, sin)
    cos = tl.where(((quadrant + 1) & 2) != 0, -cos, cos)
    return sin, cos


@triton.jit
def launch_seed(seed, SEED_IN_MEMORY: tl.constexpr):
    """The seed of the launch: loaded from the seed word when the launcher
    passed one (a replayed CUDA graph then sees the word's current value,
    ddm_fast/seeds.py), else the by-value argument itself."""
    if SEED_IN_MEMORY:
        return tl.load(seed)
    else:
        return seed


@triton.jit
def normals(seed, counters):
    """The four normals (n0, n1, n2, n3) of each Philox counter (int64),
    float32, shaped like ``counters``: ``tl.randn4x`` (docs/math.md,
    "Counter-based noise") with the same words, uniforms, clamp, log and
    square root (bit for bit) and one shared argument reduction for the
    cosine and the sine of each pair."""
    w0, w1, w2, w3 = tl.randint4x(seed, counters)
    u0 = tl.maximum(1.0e-7, uint_to_uniform_float(w0))
    u1 = uint_to_uniform_float(w1)
    u2 = tl.maximum(1.0e-7, uint_to_uniform_float(w2))
    u3 = uint_to_uniform_float(w3)
    r01 = tl.sqrt(-2.0 * tl.log(u0))
    r23 = tl.sqrt(-2.0 * tl.log(u2))
    s01, c01 = sincos(6.283185307179586 * u1)
    s23, c23 = sincos(6.283185307179586 * u3)
    return r01 * c01, r01 * s01, r23 * c23, r23 * s23


@triton.jit
def noise_tile(seed, counters, cols):
    """Normals of the tile: counters [C, 1] int64, cols [1, 4] -> [C, 4]
    float32, element (c, j) = normal j of counter c. Where a thread owns
    whole rows (aligned tiles) the selects fold away at compile time."""
    n0, n1, n2, n3 = normals(seed, counters)
    return tl.where(cols == 0, n0,
                    tl.where(cols == 1, n1, tl.where(cols == 2, n2, n3)))


# --------------------------------------------------------------- the tiles
# A program walks its COUNTERS counters in sub-tiles of SUB counters (one
# counter, 4 elements, per thread and iteration): registers do not grow
# with the tile, and what depends on the program only (the coefficient
# rows, the mask divisions) is computed once, before the loop. Positions
# inside the tile are 32-bit offsets ``pos`` from the tile's first index
# ``tile_start`` (|pos| < 4 COUNTERS), and so are mask and coefficient-row
# offsets from per-program references, even for tensors of 2**31 elements
# or more: INDEX_64 widens only the per-program scalars and the tensor
# index tile_start + pos of the loads and stores.

#: a bound above any offset inside a tile (clamps 64-bit distances to int32)
_FAR = tl.constexpr(1 << 30)


@triton.jit
def program_frame(first, start, tile_start, end):
    """(first counter, shift = start - tile_start in [-3, 0], span =
    min(end - tile_start, far)) of a program whose first counter's element
    0 has index ``start``, its first valid index being ``tile_start``: an
    element at offset pos from tile_start is in range iff 0 <= pos < span."""
    shift = (start - tile_start).to(tl.int32)
    span = tl.minimum(end - tile_start, _FAR).to(tl.int32)
    return first, shift, span


@triton.jit
def elementwise_frame(first_counter, offset, numel, COUNTERS: tl.constexpr,
                      ALIGNED: tl.constexpr, INDEX_64: tl.constexpr):
    """(first counter (int64), tile_start, shift, span) of program p of an
    element-wise kernel: counters first_counter + p COUNTERS + [0,
    COUNTERS), indices [0, numel)."""
    pid = tl.program_id(0)
    first = first_counter + pid.to(tl.int64) * COUNTERS
    if ALIGNED:  # first_counter * 4 == offset
        if INDEX_64:
            start = pid.to(tl.int64) * (4 * COUNTERS)
        else:
            start = pid * (4 * COUNTERS)
        tile_start = start
    else:
        start = first * 4 - offset
        if not INDEX_64:
            start = start.to(tl.int32)
        tile_start = tl.maximum(start, 0)
    first, shift, span = program_frame(first, start, tile_start, numel)
    return first, tile_start, shift, span


@triton.jit
def aligned_tile(first, span, k, SUB: tl.constexpr):
    """Sub-tile k (counters first + k + [0, SUB)) of an aligned program:
    counters [SUB, 1] int64, cols [1, 4], offsets [SUB, 4], the offset of
    each row's first element ``pos`` ([SUB, 1], multiples of 4) and the
    range mask ([SUB, 1])."""
    rows = k + tl.arange(0, SUB)[:, None]
    cols = tl.arange(0, 4)[None, :]
    pos = rows * 4
    return first + rows, cols, pos + cols, pos, pos < span


@triton.jit
def general_rows(first, shift, k, SUB: tl.constexpr):
    """Sub-tile k of a general program, by columns: the counter rows
    k + [0, SUB) ([SUB]), their counters (int64), and the offset >= 0 of
    each row's first element in range (where the per-row divisions are
    done; ``pos_row + d`` for d in [0, 3] covers the row's elements in
    range)."""
    rows = k + tl.arange(0, SUB)
    return rows, first + rows, tl.maximum(shift + rows * 4, 0)


@triton.jit
def general_column(shift, span, rows, j: tl.constexpr):
    """Column j of general rows: element j of each counter, at offset
    shift + 4 row + j ([SUB]), and its range mask. Without alignment a
    4-wide row cannot be one load; by columns every element stays in the
    thread that owns its counter, so the normals need no exchange."""
    pos = shift + (rows * 4 + j)
    return pos, (pos >= 0) & (pos < span)


@triton.jit
def pick(j: tl.constexpr, n0, n1, n2, n3):
    """The j-th of four values (j a constexpr)."""
    if j == 0:
        v = n0
    elif j == 1:
        v = n1
    elif j == 2:
        v = n2
    else:
        v = n3
    return v


@triton.jit
def gap(rest, divisor, k: tl.constexpr):
    """min(k divisor - rest, 4) in 32 bits: an offset d <= 3 from a point
    with remainder ``rest`` (0 <= rest < divisor) crosses the k-th multiple
    of the divisor when d >= gap."""
    return tl.minimum(k * divisor - rest, 4).to(tl.int32)


# ------------------------------------------------------------------ the mask
# Mask modes (kernel_mask_layout gives 0, 1, 2; tile_flags refines 2):
# 0 none; 1 the data's layout (index i); broadcast (O, 1, I) with period
# P = M I, index (i // P) I + i % I: 2 with P < the tile, 3 with I >= the
# tile, 4 with I < the tile <= P. Indices are relative to a per-program
# reference m_ref (the mask pointer is advanced once): everything per row
# and per element is 32-bit, at most one division per counter row (modes
# 2, 4) and compares per element.

@triton.jit
def mask_setup(tile_start, mask_inner, mask_period, MASK_MODE: tl.constexpr):
    """(m_ref, s1, s2, s3) of a program at tile_start = q0 P + rem0: mode 1:
    m_ref = tile_start; 2: m_ref = q0 I, s1 = rem0 (< P < the tile); 3:
    m_ref = q0 I + t0 with t0 = rem0 % I, s1 = I - t0 (the next inner
    block) and s2 = P - rem0 (the next period), clamped to 32 bits; 4:
    m_ref = q0 I, s1 = t0, s2 = P - rem0 (clamped)."""
    m_ref = tile_start * 0
    s1 = 0
    s2 = 0
    s3 = 0
    if MASK_MODE == 1:
        m_ref = tile_start
    elif MASK_MODE >= 2:
        q0 = tile_start // mask_period
        rem0 = tile_start - q0 * mask_period
        m_ref = q0 * mask_inner
        if MASK_MODE == 2:
            s1 = rem0.to(tl.int32)
        else:
            t0 = rem0 % mask_inner
            s2 = tl.minimum(mask_period - rem0, _FAR).to(tl.int32)
            if MASK_MODE == 3:
                m_ref += t0
                s1 = tl.minimum(mask_inner - t0, _FAR).to(tl.int32)
            else:
                s1 = t0.to(tl.int32)
    return m_ref, s1, s2, s3


@triton.jit
def mask_row_state(pos_row, mask_inner, mask_period, s1,
                   MASK_MODE: tl.constexpr):
    """Once per counter row at offset pos_row (32-bit): mode 2: (row's
    quotient - q0, gaps to the next two multiples of P, (i % P) % I); mode
    4: (0, 0, 0, (i % P) % I). Zeros otherwise."""
    q = tl.zeros_like(pos_row)
    g1 = q
    g2 = q
    t = q
    if MASK_MODE == 2:
        i = s1 + pos_row  # < P + the tile: 32-bit
        q = i // mask_period
        r = i - q * mask_period
        g1 = gap(r, mask_period, 1)
        g2 = gap(r, mask_period, 2)
        t = (r % mask_inner).to(tl.int32)
    elif MASK_MODE == 4:
        t = ((s1 + pos_row) % mask_inner).to(tl.int32)
    return q, g1, g2, t


@triton.jit
def mask_offset(pos, d, mask_inner, s1, s2, q, g1, g2, t,
                MASK_MODE: tl.constexpr):
    """Mask index - m_ref of the element at offset pos = pos_row + d (0 <= d
    <= 3 where in range; d = 0 for the rows of an aligned tile) from the
    row's state: mode 2: P >= 2 is crossed at most twice, I >= 1 at most
    three times in d <= 3; mode 3: back by I from the next inner block to
    the next period; mode 4: one period crossing at most."""
    if MASK_MODE == 1:
        m = pos
    elif MASK_MODE == 3:
        m = pos - tl.where((pos >= s1) & (pos < s2), mask_inner, 0)
    else:
        if MASK_MODE == 2:
            qq = q + (d >= g1).to(tl.int32) + (d >= g2).to(tl.int32)
        else:
            qq = (pos >= s2).to(tl.int32)
        tt = t + d
        tt -= (tt >= mask_inner).to(tl.int32) * mask_inner
        tt -= (tt >= mask_inner).to(tl.int32) * mask_inner
        tt -= (tt >= mask_inner).to(tl.int32) * mask_inner
        m = qq * mask_inner + tt
    return m


@triton.jit
def land_keep(mask_ptr, m, cols, in_range, MASK_MODE: tl.constexpr,
              ALIGNED: tl.constexpr):
    """Valid elements and a load mask, from the mask index ``m``. Aligned:
    ``m`` is per row of a [SUB, 4] tile, a multiple of 4 (I % 4 == 0; the
    caller says so with tl.multiple_of where it computes m: a hint on a
    function argument is lost), so the 4 mask bytes of a row are one load;
    the load mask is "in range and some element of the row valid"
    ([SUB, 1]), so data loads stay 4-wide and rows of land only are not
    read. General (one column, ``cols`` unused): the load mask is
    ``keep`` itself."""
    if MASK_MODE == 0:
        if ALIGNED:
            keep = in_range & (cols >= 0)
        else:
            keep = in_range
        load_mask = in_range
    else:
        if ALIGNED:
            m = m + cols
        value = tl.load(mask_ptr + m, mask=in_range, other=0)
        keep = in_range & (value != 0)
        if ALIGNED:
            load_mask = in_range & (tl.max(value, axis=1)[:, None] != 0)
        else:
            load_mask = keep
    return keep, load_mask


# ------------------------------------------------------------ loads, rows
@triton.jit
def load_masked(ptr, off, keep, load_mask, MATH: tl.constexpr,
                MASK_MODE: tl.constexpr, ALIGNED: tl.constexpr):
    """One tile in the math dtype, 0 where not ``keep``: general tiles do
    not read masked elements; aligned ones read rows with a valid element
    and replace the values of the masked ones (select, not multiply: a NaN
    or Inf under land never propagates)."""
    x = tl.load(ptr + off, mask=load_mask, other=0).to(MATH)
    if ALIGNED:
        if MASK_MODE != 0:
            x = tl.where(keep, x, 0.0)
    return x


@triton.jit
def load_inputs(x0_t, x1_t, x2_t, off, keep, load_mask,
                MATH: tl.constexpr, N_INPUTS: tl.constexpr,
                MASK_MODE: tl.constexpr, ALIGNED: tl.constexpr):
    """The up to three input tiles (:func:`load_masked`). Unused inputs
    come back as x0 (never used by callers)."""
    x0 = load_masked(x0_t, off, keep, load_mask, MATH, MASK_MODE, ALIGNED)
    x1 = x0
    x2 = x0
    if N_INPUTS > 1:
        x1 = load_masked(x1_t, off, keep, load_mask, MATH, MASK_MODE, ALIGNED)
    if N_INPUTS > 2:
        x2 = load_masked(x2_t, off, keep, load_mask, MATH, MASK_MODE, ALIGNED)
    return x0, x1, x2


@triton.jit
def row_coeffs(c_ptr, base, mask, N_INPUTS: tl.constexpr,
               HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The coefficients (inputs, noise, bias) of the row starting at table
    offset ``base`` (scalar or tensor); unused ones are 0."""
    c0 = tl.load(c_ptr + base, mask=mask, other=0)
    c1 = c0 * 0
    c2 = c1
    cn = c1
    cb = c1
    if N_INPUTS > 1:
        c1 = tl.load(c_ptr + base + 1, mask=mask, other=0)
    if N_INPUTS > 2:
        c2 = tl.load(c_ptr + base + 2, mask=mask, other=0)
    if HAS_NOISE:
        cn = tl.load(c_ptr + base + N_INPUTS, mask=mask, other=0)
    if HAS_BIAS:
        cb = tl.load(c_ptr + base + N_INPUTS + HAS_NOISE, mask=mask, other=0)
    return c0, c1, c2, cn, cb


@triton.jit
def coeff_row_state(pos_row, per_row, rest_t):
    """Coefficient rows when rows are shorter than the tile (ROW_PAIR 0),
    once per counter row at offset pos_row: (row - the tile's first row,
    gaps to the next three multiples of per_row (per_row may be 1)), from
    rest_t = tile_start % per_row; all 32-bit."""
    i = rest_t + pos_row  # < per_row + the tile
    q = i // per_row
    r = i - q * per_row
    return q.to(tl.int32), gap(r, per_row, 1), gap(r, per_row, 2), gap(r, per_row, 3)


@triton.jit
def select_row(second, a, b):
    """b where ``second``, else a (a row's coefficient per element)."""
    return tl.where(second, b, a)


@triton.jit
def combine(c0, c1, c2, cn, cb, x0, x1, x2, noise,
            N_INPUTS: tl.constexpr, HAS_NOISE: tl.constexpr,
            HAS_BIAS: tl.constexpr):
    """sum_k c_k x_k + cn noise + cb."""
    acc = c0 * x0
    if N_INPUTS > 1:
        acc += c1 * x1
    if N_INPUTS > 2:
        acc += c2 * x2
    if HAS_NOISE:
        acc += cn * noise
    if HAS_BIAS:
        acc += cb
    return acc


@triton.jit
def combine_rows(c_t, crow, in_range, a0, a1, a2, an, ab, b0, b1, b2, bn, bb,
                 x0, x1, x2, noise, N_INPUTS: tl.constexpr,
                 HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr,
                 ROW_PAIR: tl.constexpr):
    """The combination with the coefficients of each element's row, ``crow``
    rows after the tile's first row (c_t: the table advanced to it):
    ROW_PAIR 1: crow is 0 or 1, the rows are the scalars a, b; otherwise
    the row is gathered (per row of an aligned tile, per element
    otherwise; a tiny table, cache-resident)."""
    NCOLS: tl.constexpr = N_INPUTS + HAS_NOISE + HAS_BIAS
    if ROW_PAIR == 1:
        second = crow != 0
        out = combine(select_row(second, a0, b0), select_row(second, a1, b1),
                      select_row(second, a2, b2), select_row(second, an, bn),
                      select_row(second, ab, bb), x0, x1, x2, noise,
                      N_INPUTS, HAS_NOISE, HAS_BIAS)
    else:
        c0, c1, c2, cn, cb = row_coeffs(c_t, crow * NCOLS, in_range,
                                        N_INPUTS, HAS_NOISE, HAS_BIAS)
        out = combine(c0, c1, c2, cn, cb, x0, x1, x2, noise,
                      N_INPUTS, HAS_NOISE, HAS_BIAS)
    return out
