"""The ``cpu`` and ``cuda`` backends: C++/CUDA kernels from ``csrc/``.

They run through the compiled extension ``ddm_fast._C``, which registers the
ops ``torch.ops.ddm_fast.{randn,affine,affine_sum}_{cpu,cuda}`` with the
semantics of :mod:`ddm_fast.ops.reference`. The kernels themselves are the
next milestone of the roadmap (``csrc/README.md``); until the extension is
built this module reports the backends unavailable, and the dispatcher in
:mod:`ddm_fast.backends` falls back to ``reference`` (or ``triton`` on GPU).
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

__all__ = ["why_unavailable", "randn", "affine", "affine_sum"]


def _extension():
    try:
        return importlib.import_module("ddm_fast._C")
    except ImportError:
        return None


def why_unavailable(name: str) -> Optional[str]:
    if _extension() is None:
        return ("the compiled extension ddm_fast._C is not built (the csrc/ "
                "kernels are not part of this release)")
    if name == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is visible"
    return None


def _op(kind: str, device):
    return getattr(torch.ops.ddm_fast, f"{kind}_{torch.device(device).type}")


def randn(shape, seed, offset, dtype, device):
    return _op("randn", device)(list(shape), seed, offset, dtype, device)


def affine(inputs, coeffs, mask, seed, offset, coeffs2, bias):
    return _op("affine", coeffs.device)(inputs, coeffs, mask, seed, offset,
                                        coeffs2, bias)


def affine_sum(inputs, coeffs, mask, seed, offset, power, bias):
    return _op("affine_sum", coeffs.device)(inputs, coeffs, mask, seed, offset,
                                            power, bias)
