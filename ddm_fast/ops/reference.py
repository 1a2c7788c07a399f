"""The reference backend: every primitive of the fused-op layer in plain PyTorch.

This module is the oracle the Triton, C++ and CUDA kernels are tested
against, and the fallback on any machine. It is written for clarity, not
speed: it materialises the noise and the broadcast mask. PyTorch's autograd
differentiates it directly.

The three primitives (SPEC §7, §9):

- ``randn(shape, seed, offset, dtype, device)``: counter-based normal noise;
  element i is noise[offset + i] of SPEC §9.
- ``affine(inputs, coeffs, mask, seed, offset, coeffs2, bias)``: per-row
  affine combination  out = sum_k c[r, k] in_k + c[r, K] xi + c[r, K+1] * 1,
  masked; an optional second output with ``coeffs2`` shares the loads.
- ``affine_sum(inputs, coeffs, mask, seed, offset, power, bias)``: per-row
  sum over valid elements of (the same affine combination) ** power.

Rows: ``coeffs`` has R rows; the flattened (row-major) tensor is split into R
equal chunks, row r using ``coeffs[r]``. R = B gives per-sample coefficients,
R = B * C per-sample-and-channel ones (the fused Gaussian encoding).
Column order of ``coeffs``: the inputs, then the noise (when ``seed`` is not
None), then the constant (when ``bias``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

__all__ = ["randn", "affine", "affine_sum", "philox4x32", "why_unavailable"]

_MASK32 = 0xFFFFFFFF
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
UINT_TO_UNIFORM = 4.6566127342e-10  # float32(2**-31), Triton's constant
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


def philox4x32(counter_lo: torch.Tensor, counter_hi: torch.Tensor, seed: int,
               n_rounds: int = 10):
    """Philox4x32-10 on counters (lo, hi, 0, 0) with key (seed lo, seed hi);
    the exact word sequence of Triton's ``tl.randint4x``. Inputs and outputs
    are int64 tensors holding uint32 values."""
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


def randn(shape: Sequence[int], seed: int, offset: int = 0,
          dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """noise[offset + i] for i < prod(shape), SPEC §9, as float32 math."""
    shape = tuple(int(s) for s in shape)
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
    return noise[start:start + numel].reshape(shape).to(dtype)


def _compute_dtype(inputs: Sequence[torch.Tensor]) -> torch.dtype:
    # float32 math for float32 and lower precision, float64 stays float64
    if any(t.dtype == torch.float64 for t in inputs):
        return torch.float64
    return torch.float32


def _combination(inputs: Sequence[torch.Tensor], coeffs: torch.Tensor,
                 shape, seed: Optional[int], offset: int, bias: bool,
                 math_dtype: torch.dtype) -> torch.Tensor:
    rows = coeffs.shape[0]
    numel = 1
    for s in shape:
        numel *= s
    per_row = numel // rows
    coeffs = coeffs.to(math_dtype)

    def column(k):
        return coeffs[:, k].reshape(rows, 1)

    out = torch.zeros((rows, per_row), dtype=math_dtype, device=coeffs.device)
    for k, tensor in enumerate(inputs):
        out = out + column(k) * tensor.to(math_dtype).reshape(rows, per_row)
    k = len(inputs)
    if seed is not None:
        noise = randn((rows, per_row), seed, offset, dtype=torch.float32,
                      device=coeffs.device).to(math_dtype)
        out = out + column(k) * noise
        k += 1
    if bias:
        out = out + column(k)
    return out.reshape(shape)


def _valid(mask: Optional[torch.Tensor], shape) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    return (mask != 0).expand(shape)


def affine(inputs: List[torch.Tensor], coeffs: torch.Tensor,
           mask: Optional[torch.Tensor] = None, seed: Optional[int] = None,
           offset: int = 0, coeffs2: Optional[torch.Tensor] = None,
           bias: bool = False, shape=None, out_dtype=None):
    """Per-row affine combination; returns [out] or [out, out2]."""
    shape = tuple(inputs[0].shape) if inputs else tuple(shape)
    math_dtype = _compute_dtype(list(inputs) + [coeffs])
    if out_dtype is None:
        out_dtype = inputs[0].dtype if inputs else torch.float32
    valid = _valid(mask, shape)
    outs = []
    for c in (coeffs, coeffs2):
        if c is None:
            continue
        value = _combination(inputs, c, shape, seed, offset, bias, math_dtype)
        if valid is not None:
            value = torch.where(valid, value, torch.zeros((), dtype=math_dtype,
                                                          device=value.device))
        outs.append(value.to(out_dtype))
    return outs


def affine_sum(inputs: List[torch.Tensor], coeffs: torch.Tensor,
               mask: Optional[torch.Tensor] = None, seed: Optional[int] = None,
               offset: int = 0, power: int = 2, bias: bool = False):
    """Per-row sum over valid elements of (affine combination) ** power,
    in float32 (float64 for float64 inputs); shape (R,)."""
    shape = tuple(inputs[0].shape)
    math_dtype = _compute_dtype(list(inputs) + [coeffs])
    value = _combination(inputs, coeffs, shape, seed, offset, bias, math_dtype)
    if power == 2:
        value = value * value
    elif power != 1:
        raise ValueError(f"power must be 1 or 2, got {power}")
    valid = _valid(mask, shape)
    if valid is not None:
        value = torch.where(valid, value, torch.zeros((), dtype=math_dtype,
                                                      device=value.device))
    return value.reshape(coeffs.shape[0], -1).sum(dim=1)
