"""Exhaustive accuracy check of :func:`ddm_fast.kernels.common.sincos`.

Evaluates the same sequence of float32 operations as the kernel (every
``tl.fma`` as one correctly rounded fused multiply-add, as on the GPU and
in Triton >= 3.7's interpreter; optionally as a product and a sum, as in
Triton 3.6's interpreter) for every float32 x in [0, float32(2 pi)]
(1 086 918 620 values, the whole domain of the Box-Muller angles), and
reports the largest error against float64 ``sin``/``cos``: absolute, and in
float32 ulps of the result where it is at least 2**-10.

``python -m ddm_fast.kernels.check_sincos`` (about 5-8 minutes on 2 CPU
cores; needs NumPy and, for the exact fma, Triton's interpreter helper
``fma_fp32``). kernels/README.md records the result.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from .common import _PIO2_1, _PIO2_2, _PIO2_3, _ROUND, _TWO_OVER_PI

_F = np.float32
# the polynomial coefficients of common.sincos
_SIN = (_F(-1.9574658654164523e-4), _F(8.33270326256752e-3),
        _F(-0.16666662693023682))
_COS = (_F(2.4279579520225525e-05), _F(-0.0013887860113754868507),
        _F(0.041666727513074875), _F(-0.4999999701976776))


def _exact_fma():
    try:
        from triton._C.libtriton import interpreter
        helper = interpreter.fma_fp32
    except (ImportError, AttributeError):
        return None

    def fma(a, b, c):
        return helper(*np.broadcast_arrays(_F(a), _F(b), _F(c)))
    return fma


def _two_step_fma(a, b, c):
    return (_F(a) * _F(b) + _F(c)).astype(np.float32)


def sincos(x: np.ndarray, fma) -> tuple:
    """common.sincos in NumPy float32 with the given fma."""
    t = fma(x, _F(_TWO_OVER_PI.value), _F(0))
    big = fma(t, _F(1), _F(_ROUND.value))
    quadrant = big.view(np.int32)
    j = (big - _F(_ROUND.value)).astype(np.float32)
    r = fma(j, -_F(_PIO2_1.value), x)
    r = fma(j, -_F(_PIO2_2.value), r)
    r = fma(j, -_F(_PIO2_3.value), r)
    r2 = (r * r).astype(np.float32)
    ps = fma(fma(r2, _SIN[0], _SIN[1]), r2, _SIN[2])
    pc = fma(fma(fma(r2, _COS[0], _COS[1]), r2, _COS[2]), r2, _COS[3])
    sin_r = fma(fma(r2, r, _F(0)), ps, r)
    cos_r = fma(r2, pc, _F(1))
    odd = (quadrant & 1) != 0
    s = np.where(odd, cos_r, sin_r)
    c = np.where(odd, sin_r, cos_r)
    s = np.where((quadrant & 2) != 0, -s, s)
    c = np.where(((quadrant + 1) & 2) != 0, -c, c)
    return s, c


def check(step: int = 1 << 24, two_step_every: int = 8) -> dict:
    """The largest errors over every float32 in [0, float32(2 pi)]."""
    fma = _exact_fma()
    if fma is None:
        raise RuntimeError("needs Triton's interpreter fma_fp32 (Triton >= 3.7)")
    top = int(np.float32(6.283185307179586).view(np.uint32))
    worst = dict(sin_abs=0.0, cos_abs=0.0, sin_ulp=0.0, cos_ulp=0.0,
                 sin_abs_two_step=0.0, cos_abs_two_step=0.0)
    for k, lo in enumerate(range(0, top + 1, step)):
        x = np.arange(lo, min(lo + step, top + 1), dtype=np.uint32).view(np.float32)
        xd = x.astype(np.float64)
        want = (np.sin(xd), np.cos(xd))
        got = sincos(x, fma)
        for name, g, w in zip(("sin", "cos"), got, want):
            err = np.abs(g - w)
            worst[f"{name}_abs"] = max(worst[f"{name}_abs"], float(err.max()))
            big = np.abs(w) >= 2.0 ** -10
            ulp = np.spacing(np.abs(w[big]).astype(np.float32)).astype(np.float64)
            worst[f"{name}_ulp"] = max(worst[f"{name}_ulp"],
                                       float((err[big] / ulp).max()))
        if k % two_step_every == 0:
            for name, g, w in zip(("sin", "cos"), sincos(x, _two_step_fma), want):
                worst[f"{name}_abs_two_step"] = max(
                    worst[f"{name}_abs_two_step"], float(np.abs(g - w).max()))
    worst["values"] = top + 1
    worst["ulp_of_1"] = float(np.spacing(np.float32(1)))
    return worst


def main() -> int:
    t0 = time.time()
    result = check()
    for key, value in result.items():
        print(f"{key:18s} {value:.6g}")
    print(f"{time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
