"""The ``cpu`` and ``cuda`` backends: the C++ and CUDA kernels of ``csrc/``.

The compiled modules ``ddm_fast._C`` (C++, OpenMP, SIMD chosen at run time)
and ``ddm_fast._C_cuda`` (CUDA) take raw pointers, sizes, dtype codes and a
thread count or a CUDA stream; they do not link against torch, so one build
serves every torch version. This module is the only caller: it checks every
tensor (device, dtype, contiguity, shape) before its pointer crosses, then
launches on the tensors' device and its current stream.
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Dict, Optional, Tuple

import torch

from ..seeds import has_noise, kernel_seed
from .layout import kernel_mask_layout

__all__ = ["why_unavailable", "randn", "affine", "affine_sum", "affine_dots",
           "extension_info"]

LIBRARY_KIND = "custom_op"
API_VERSION = 2  # csrc/include/ddm_fast/kernels.h: kApiVersion

DTYPE_CODES: Dict[torch.dtype, int] = {
    torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_MODULES = {"cpu": "ddm_fast._C", "cuda": "ddm_fast._C_cuda"}
_loaded: Dict[str, Tuple[Optional[object], Optional[str]]] = {}


def _build_config() -> Optional[dict]:
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                        "_build_config.json")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _load(kind: str):
    """(module, None) or (None, reason), computed once per kind."""
    if kind not in _loaded:
        name = _MODULES[kind]
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            config = _build_config()
            built = config is not None and (config.get(kind) or {}).get("built")
            needs = "a C++ compiler and nvcc" if kind == "cuda" else "a C++ compiler"
            hint = ("it was built but does not import" if built else
                    f"it was not built ({needs} at install time; run "
                    f"pip install . again)")
            _loaded[kind] = (None, f"the compiled extension {name} is missing: "
                                   f"{hint}: {exc}")
            return _loaded[kind]
        version = getattr(module, "API_VERSION", None)
        if version != API_VERSION:
            _loaded[kind] = (None, f"{name} was built for kernel API {version} but "
                                   f"this ddm_fast expects {API_VERSION}: a stale "
                                   f"build; reinstall with pip install .")
            return _loaded[kind]
        _loaded[kind] = (module, None)
    return _loaded[kind]


def why_unavailable(name: str) -> Optional[str]:
    module, reason = _load(name)
    if reason is not None:
        return reason
    if name == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is visible to torch"
        if module.device_count() < 1:
            return ("ddm_fast._C_cuda sees no CUDA device (driver too old for "
                    "its CUDA runtime?)")
    return None


def extension_info(name: str) -> Optional[dict]:
    """The compiled module's own build information (None if not loaded)."""
    module, _ = _load(name)
    return None if module is None else dict(module.build_info())


# ----------------------------------------------------------- checks
def _ptr(name: str, t: Optional[torch.Tensor], device: torch.device,
         dtypes=None) -> int:
    """The data pointer of a checked tensor (0 for None)."""
    if t is None:
        return 0
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {sorted(map(str, dtypes))}, "
                        f"got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return t.data_ptr() if t.numel() > 0 else 0


def _problem(x0, x1, x2, coeffs, mask):
    """The arguments shared by every affine-family call, checked."""
    device = x0.device
    xs = (x0, x1, x2)
    n_inputs = 1 + (x1 is not None) + (x2 is not None)
    if x2 is not None and x1 is None:
        raise ValueError("x2 given without x1")
    ptrs, codes = [], []
    for k, x in enumerate(xs):
        if x is not None and x.shape != x0.shape:
            raise ValueError(f"x{k} has shape {tuple(x.shape)}, expected "
                             f"{tuple(x0.shape)}")
        ptrs.append(_ptr(f"x{k}", x, device, DTYPE_CODES))
        codes.append(DTYPE_CODES[x.dtype] if x is not None else 0)
    if coeffs.dtype not in (torch.float32, torch.float64) or coeffs.ndim != 2:
        raise ValueError(f"coeffs must be a 2-d float32/float64 table, got "
                         f"{coeffs.dtype} {tuple(coeffs.shape)}")
    numel, rows = x0.numel(), coeffs.shape[0]
    if (rows < 1 and numel > 0) or (rows > 0 and numel % rows):
        raise ValueError(f"coeffs has {rows} rows, which must divide the "
                         f"number of elements ({numel})")
    _ptr("coeffs", coeffs, device)
    mode, inner, period = kernel_mask_layout(mask, x0.shape)
    mask_ptr = _ptr("mask", mask, device, (torch.uint8,)) if mode else 0
    return (tuple(ptrs), tuple(codes), n_inputs, DTYPE_CODES[coeffs.dtype],
            mask_ptr, inner, period, numel, rows)


def _launch_tail(device: torch.device):
    """(threads,) on CPU; (device index, stream) on CUDA: the caller's
    current stream of the tensors' device."""
    if device.type == "cpu":
        return (max(1, torch.get_num_threads()),)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return (index, torch.cuda.current_stream(index).cuda_stream)


def _module_for(device: torch.device):
    module, reason = _load(device.type if device.type in _MODULES else "cpu")
    if module is None or device.type not in _MODULES:
        from . import BackendUnavailableError
        raise BackendUnavailableError(
            reason or f"the C++/CUDA backends cannot run {device} tensors")
    return module


# ------------------------------------------------------ the primitives
def randn(numel: int, seed: int, offset: int, dtype: torch.dtype,
          device: torch.device) -> torch.Tensor:
    device = torch.device(device)
    module = _module_for(device)
    if dtype not in DTYPE_CODES:
        raise TypeError(f"dtype must be one of {sorted(map(str, DTYPE_CODES))}, "
                        f"got {dtype}")
    value, word = _seed(seed, device)
    out = torch.empty(numel, dtype=dtype, device=device)
    if numel > 0:
        module.randn(out.data_ptr(), DTYPE_CODES[dtype], numel, value, word,
                     offset, *_launch_tail(device))
    return out


def affine(x0, x1, x2, coeffs, coeffs2, mask, seed: int, offset: int,
           bias: bool, out_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    module = _module_for(x0.device)
    problem = _problem(x0, x1, x2, coeffs, mask)
    if out_dtype not in DTYPE_CODES:
        raise TypeError(f"out_dtype must be one of "
                        f"{sorted(map(str, DTYPE_CODES))}, got {out_dtype}")
    out = torch.empty(x0.shape, dtype=out_dtype, device=x0.device)
    if coeffs2 is not None:
        if coeffs2.shape != coeffs.shape or coeffs2.dtype != coeffs.dtype:
            raise ValueError("coeffs2 must match coeffs in shape and dtype")
        out2 = torch.empty(x0.shape, dtype=out_dtype, device=x0.device)
    else:
        out2 = x0.new_empty(0, dtype=out_dtype)
    ptrs, codes, n_inputs, math, mask_ptr, inner, period, numel, rows = problem
    if numel > 0:
        module.affine(ptrs, codes, n_inputs, coeffs.data_ptr(),
                      _ptr("coeffs2", coeffs2, x0.device), math, mask_ptr, inner,
                      period, *_seed(seed, x0.device), offset, bool(bias),
                      numel, rows, out.data_ptr(), out2.data_ptr() if coeffs2 is not None else 0,
                      DTYPE_CODES[out_dtype], *_launch_tail(x0.device))
    return out, out2


def _seed(seed, device):
    """(seed value, seed word pointer) of a primitive's seed argument."""
    value, word = kernel_seed(seed, device)
    return value, (word.data_ptr() if word is not None else 0)


def _workspace(module, device, n_inputs, seed, bias, numel, rows, cols):
    """CUDA reductions' scratch, from torch's caching allocator."""
    if device.type != "cuda":
        return ()
    size = module.reduction_workspace_bytes(n_inputs, 0 if has_noise(seed) else -1,
                                            bias, numel, rows, cols)
    scratch = torch.empty(max(size, 1), dtype=torch.uint8, device=device)
    return (scratch.data_ptr(), scratch)


def affine_sum(x0, x1, x2, coeffs, mask, seed: int, offset: int, power: int,
               bias: bool) -> torch.Tensor:
    module = _module_for(x0.device)
    ptrs, codes, n_inputs, math, mask_ptr, inner, period, numel, rows = \
        _problem(x0, x1, x2, coeffs, mask)
    out = torch.zeros(rows, dtype=coeffs.dtype, device=x0.device)
    if numel > 0:
        scratch = _workspace(module, x0.device, n_inputs, seed, bias, numel, rows, 1)
        module.affine_sum(ptrs, codes, n_inputs, coeffs.data_ptr(), math,
                          mask_ptr, inner, period, *_seed(seed, x0.device),
                          offset, bool(bias),
                          numel, rows, int(power), out.data_ptr(),
                          *scratch[:1], *_launch_tail(x0.device))
    return out


def affine_dots(x0, x1, x2, weight, coeffs, mask, seed: int, offset: int,
                bias: bool, weight_kind: int) -> torch.Tensor:
    module = _module_for(x0.device)
    ptrs, codes, n_inputs, math, mask_ptr, inner, period, numel, rows = \
        _problem(x0, x1, x2, coeffs, mask)
    if weight_kind == 1:
        if weight is None or weight.shape != x0.shape:
            raise ValueError("weight must be given with the inputs' shape for "
                             "weight_kind 1")
        weight_ptr = _ptr("weight", weight, x0.device, DTYPE_CODES)
        weight_code = DTYPE_CODES[weight.dtype]
    else:
        weight_ptr, weight_code = 0, 0
    cols = coeffs.shape[1]
    out = torch.zeros((rows, cols), dtype=coeffs.dtype, device=x0.device)
    if numel > 0:
        scratch = _workspace(module, x0.device, n_inputs, seed, bias, numel, rows,
                             cols)
        module.affine_dots(ptrs, codes, n_inputs, weight_ptr, weight_code,
                           int(weight_kind), coeffs.data_ptr(), math, mask_ptr,
                           inner, period, *_seed(seed, x0.device), offset,
                           bool(bias), numel, rows,
                           out.data_ptr(), *scratch[:1], *_launch_tail(x0.device))
    return out
