"""The reference backend: the four primitives in plain PyTorch.

This module is the oracle the Triton, C++ and CUDA kernels are tested
against, and the fallback on any machine. It is written for clarity, not
speed: it materialises the noise and the broadcast mask. Its gradients come
from the same backend-neutral autograd as every other backend's
(:mod:`ddm_fast.ops.library`).

The primitives (docs/math.md, "The kernels" and "Counter-based noise"):

- ``randn(numel, seed, offset, dtype, device)``: element i is
  noise[offset + i] of the counter-based generator.
- ``affine(x0, x1, x2, coeffs, coeffs2, mask, seed, offset, bias, out_dtype)``:
  per-row affine combination  out = sum_k c[r, k] x_k + c[r, K] xi + c[r, K+1],
  masked; ``coeffs2`` gives a second output from the same loads.
- ``affine_sum(...)``: per-row sum over valid elements of the combination
  (power 1) or of its square (power 2).
- ``affine_dots(...)``: per row and column j of the combination (inputs,
  noise, 1) the sum over valid elements of w * column_j, w = 1, a weight
  tensor, or the combination itself: the coefficient gradients.

Rows: ``coeffs`` has R rows; the flattened (row-major) tensor is split into R
equal chunks, row r using ``coeffs[r]``. R = B gives per-sample coefficients,
R = B * C per-sample-and-channel ones (the fused Gaussian encoding).
Column order of ``coeffs``: the inputs, then the noise (when ``seed`` is not
None), then the constant (when ``bias``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from .._masks import row_sums
from ..seeds import has_noise

__all__ = ["randn", "affine", "affine_sum", "affine_dots", "philox4x32",
           "why_unavailable"]

_MASK32 = 0xFFFFFFFF
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
UINT_TO_UNIFORM = 4.6566127342e-10  # Triton's; float32: 2**-31 - 2**-55
TWO_PI = 6.283185307179586


def why_unavailable(name: str = "reference") -> Optional[str]:
    return None


def _mulhilo(a: torch.Tensor, b: int):
    """(hi, lo) 32-bit words of the 64-bit product a*b; a holds uint32 values
    in int64, b is a 32-bit constant. Splitting b in 16-bit halves keeps every
    partial product below 2**49, so nothing overflows int64."""
    b_lo, b_hi = b & 0xFFFF, b >> 16
    t_lo = a * b_lo
    t_hi = a * b_hi
    hi = (t_hi + (t_lo >> 16)) >> 16
    lo = (t_lo + ((t_hi & 0xFFFF) << 16)) & _MASK32
    return hi & _MASK32, lo


def philox4x32(counter_lo: torch.Tensor, counter_hi: torch.Tensor, seed,
               n_rounds: int = 10):
    """Philox4x32-10 on counters (lo, hi, 0, 0) with key (seed lo, seed hi);
    the exact word sequence of Triton's ``tl.randint4x``. Inputs and outputs
    are int64 tensors holding uint32 values; ``seed`` is an int or a seed
    word (a one-element int64 tensor, read by tensor ops: no host sync)."""
    if isinstance(seed, torch.Tensor):
        seed = seed.reshape(())
    c0 = counter_lo
    c1 = counter_hi
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    for _ in range(n_rounds):
        hi_b, lo_b = _mulhilo(c2, PHILOX_ROUND_B)
        hi_a, lo_a = _mulhilo(c0, PHILOX_ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def _uniform(words: torch.Tensor) -> torch.Tensor:
    # reinterpret as int32, map negative x to ~x = -x - 1, scale in float32
    signed = torch.where(words >= 2 ** 31, words - 2 ** 32, words)
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * torch.tensor(UINT_TO_UNIFORM,
                                                   dtype=torch.float32)


def _box_muller(u1: torch.Tensor, u2: torch.Tensor):
    u1 = torch.clamp(u1, min=1.0e-7)
    theta = torch.tensor(TWO_PI, dtype=torch.float32) * u2
    radius = torch.sqrt(-2.0 * torch.log(u1))
    return radius * torch.cos(theta), radius * torch.sin(theta)


def randn(shape: Union[int, Sequence[int]], seed, offset: int = 0,
          dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """noise[offset + i] for i < prod(shape), float32 math; ``shape`` may
    be an element count (a flat result); ``seed`` an int or a seed word
    (:mod:`ddm_fast.seeds`)."""
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    numel = 1
    for s in shape:
        numel *= s
    device = torch.device(device) if device is not None else torch.device("cpu")
    if numel == 0:
        return torch.empty(shape, dtype=dtype, device=device)
    first = offset // 4
    last = (offset + numel - 1) // 4
    counters = torch.arange(first, last + 1, dtype=torch.int64, device=device)
    words = philox4x32(counters & _MASK32, (counters >> 32) & _MASK32, seed)
    n0, n1 = _box_muller(_uniform(words[0]), _uniform(words[1]))
    n2, n3 = _box_muller(_uniform(words[2]), _uniform(words[3]))
    noise = torch.stack((n0, n1, n2, n3), dim=-1).reshape(-1)
    start = offset - 4 * first
    # a fresh tensor (no storage offset): ops must not return views
    return noise[start:start + numel].reshape(shape).to(dtype, copy=True)


def _columns(x0, x1, x2, seed: int, offset: int, bias: bool, rows: int,
             valid: Optional[torch.Tensor], math: torch.dtype):
    """The columns of the combination as (rows, per_row) tensors in the math
    dtype, masked positions replaced by 0 before any arithmetic (so NaN
    under land reaches nothing)."""
    shape = x0.shape
    per_row = x0.numel() // rows if rows > 0 else 0

    def clean(t):
        t = t.to(math)
        if valid is not None:
            t = torch.where(valid, t, torch.zeros((), dtype=math, device=t.device))
        return t.reshape(rows, per_row)

    columns = [clean(t) for t in (x0, x1, x2) if t is not None]
    if has_noise(seed):
        columns.append(clean(randn(shape, seed, offset, torch.float32, x0.device)))
    if bias:
        columns.append(clean(torch.ones(shape, dtype=math, device=x0.device)))
    return columns


def _valid(mask: Optional[torch.Tensor], shape) -> Optional[torch.Tensor]:
    return None if mask is None else (mask != 0).expand(shape)


def _combine(columns, coeffs: torch.Tensor) -> torch.Tensor:
    total = coeffs[:, :1] * columns[0]
    for j in range(1, len(columns)):
        total = total + coeffs[:, j:j + 1] * columns[j]
    return total


def affine(x0, x1, x2, coeffs, coeffs2, mask, seed: int, offset: int,
           bias: bool, out_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, out2); out2 is empty when ``coeffs2`` is None. Math in
    ``coeffs.dtype``."""
    rows = coeffs.shape[0]
    valid = _valid(mask, x0.shape)
    columns = _columns(x0, x1, x2, seed, offset, bias, rows, valid, coeffs.dtype)
    outs = []
    for table in (coeffs, coeffs2):
        if table is None:
            outs.append(x0.new_empty(0, dtype=out_dtype))
            continue
        value = _combine(columns, table).reshape(x0.shape)
        if valid is not None:  # the bias column is 0 there too; be explicit
            value = torch.where(valid, value, torch.zeros((), dtype=value.dtype,
                                                          device=value.device))
        outs.append(value.to(out_dtype))
    return outs[0], outs[1]


def affine_sum(x0, x1, x2, coeffs, mask, seed: int, offset: int, power: int,
               bias: bool) -> torch.Tensor:
    """(rows,) in ``coeffs.dtype``: per-row sums of v ** power, valid only."""
    rows = coeffs.shape[0]
    valid = _valid(mask, x0.shape)
    columns = _columns(x0, x1, x2, seed, offset, bias, rows, valid, coeffs.dtype)
    value = _combine(columns, coeffs)
    if power == 2:
        value = value * value
    return row_sums(value)


def affine_dots(x0, x1, x2, weight, coeffs, mask, seed: int, offset: int,
                bias: bool, weight_kind: int) -> torch.Tensor:
    """(rows, columns) in ``coeffs.dtype``: sum over valid elements of
    w * column_j, w = 1 (kind 0), ``weight`` (1) or the combination (2)."""
    rows = coeffs.shape[0]
    valid = _valid(mask, x0.shape)
    columns = _columns(x0, x1, x2, seed, offset, bias, rows, valid, coeffs.dtype)
    if weight_kind == 0:
        return torch.stack([row_sums(c) for c in columns], dim=1)
    if weight_kind == 1:
        w = weight.to(coeffs.dtype)
        if valid is not None:
            w = torch.where(valid, w, torch.zeros((), dtype=w.dtype, device=w.device))
        w = w.reshape(rows, -1)
    else:
        w = _combine(columns, coeffs)
    return torch.stack([row_sums(w * c) for c in columns], dim=1)
