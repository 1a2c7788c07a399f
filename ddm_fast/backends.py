"""Which implementation runs the fused ops.

Backends:

- ``reference``: plain PyTorch (:mod:`ddm_fast.ops.reference`). The oracle,
  differentiable by PyTorch's own autograd, runs anywhere.
- ``triton``: the Triton kernels of ``kernels/`` as ``torch.library.triton_op``
  (GPU; on CPU only through ``TRITON_INTERPRET=1``, slow, for tests).
- ``cpu`` / ``cuda``: the C++ and CUDA kernels of ``csrc/`` through the
  compiled extension ``ddm_fast._C``. They are available once that extension
  is built; until then they report why not.

Default choice per tensor device: CUDA -> ``triton`` (else ``cuda``, else
``reference``), CPU -> ``cpu`` when built, else ``reference``.
Force one with ``with ddm_fast.backends.use("triton"):`` or the environment
variable ``DDM_FAST_BACKEND``; the context manager wins over the variable.
A forced backend that cannot run raises :class:`BackendUnavailableError`.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
from typing import Dict, Iterator, List, Optional

import torch

__all__ = ["NAMES", "available", "use", "current", "get",
           "BackendUnavailableError", "why_unavailable"]

NAMES = ("reference", "triton", "cpu", "cuda")
ENV_VAR = "DDM_FAST_BACKEND"

# module implementing randn / affine / affine_sum for each backend
_MODULES = {
    "reference": "ddm_fast.ops.reference",
    "triton": "ddm_fast.ops.triton_backend",
    "cpu": "ddm_fast.ops.extension_backend",
    "cuda": "ddm_fast.ops.extension_backend",
}


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run on this machine or for these tensors."""


_local = threading.local()


def _forced_stack() -> List[str]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _check_name(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")
    return name


def why_unavailable(name: str) -> Optional[str]:
    """None if backend ``name`` can run here, else the reason it cannot."""
    _check_name(name)
    if name == "reference":
        return None
    try:
        module = importlib.import_module(_MODULES[name])
    except ImportError as exc:  # a missing optional dependency
        return f"importing {_MODULES[name]} failed: {exc}"
    return module.why_unavailable(name)


def available() -> List[str]:
    """Backends usable on this machine."""
    return [n for n in NAMES if why_unavailable(n) is None]


@contextlib.contextmanager
def use(name: str) -> Iterator[str]:
    """Force backend ``name`` inside the ``with`` block (this thread)."""
    _check_name(name)
    reason = why_unavailable(name)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} is unavailable: {reason}")
    _forced_stack().append(name)
    try:
        yield name
    finally:
        _forced_stack().pop()


def _forced() -> Optional[str]:
    stack = _forced_stack()
    if stack:
        return stack[-1]
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env:
        if env not in NAMES:
            raise ValueError(f"{ENV_VAR}={env!r} is not a backend; expected one "
                             f"of {NAMES}")
        return env
    return None


_default_cache: Dict[str, str] = {}


def _default(device_type: str) -> str:
    if device_type not in _default_cache:
        order = {"cuda": ("triton", "cuda"), "cpu": ("cpu",)}.get(device_type, ())
        choice = "reference"
        for name in order:
            if why_unavailable(name) is None:
                choice = name
                break
        _default_cache[device_type] = choice
    return _default_cache[device_type]


_LOADED: Dict[str, object] = {}


def _load(name: str, device_type: str):
    """Import backend ``name`` once and check it can run on ``device_type``."""
    if name not in _LOADED:
        module = importlib.import_module(_MODULES[name])
        if name != "reference":
            reason = module.why_unavailable(name)
            if reason is not None:
                raise BackendUnavailableError(
                    f"backend {name!r} is unavailable: {reason}")
        _LOADED[name] = module
    if name in ("cpu", "cuda") and device_type != name:
        raise BackendUnavailableError(
            f"backend {name!r} cannot run tensors on {device_type}")
    return _LOADED[name]


@torch.compiler.assume_constant_result
def _resolve(device_type: str) -> str:
    # Constant under torch.compile: the choice (and the import of the chosen
    # backend) happens once per trace, in Python, never inside a graph.
    forced = _forced()
    name = forced if forced is not None else _default(device_type)
    _load(name, device_type)
    return name


def current(device) -> str:
    """Name of the backend that runs ops on ``device``."""
    return _resolve(torch.device(device).type)


def get(device):
    """The backend module for tensors on ``device``."""
    return _LOADED[_resolve(torch.device(device).type)]
