"""Which implementation runs the fused primitives: the backend registry.

Every backend implements the same four forward primitives on prepared
tensors (contiguous inputs, the coefficient table in the math dtype, the
mask from :func:`layout.prepare_mask`), and nothing else:

- ``randn(numel, seed, offset, dtype, device)``
- ``affine(x0, x1, x2, coeffs, coeffs2, mask, seed, offset, bias, out_dtype)``
- ``affine_sum(x0, x1, x2, coeffs, mask, seed, offset, power, bias)``
- ``affine_dots(x0, x1, x2, weight, coeffs, mask, seed, offset, bias, weight_kind)``

(``seed = -1``: no noise column.) Autograd, argument checks, layouts and the
math-dtype rule live once above them, in :mod:`ddm_fast.ops`.

The backends (:data:`REGISTRY`):

- ``reference``: plain PyTorch (:mod:`.reference`), the oracle; runs anywhere.
- ``triton``: the Triton kernels of ``kernels/`` (:mod:`.triton_kernels`);
  CUDA tensors, or CPU tensors through ``TRITON_INTERPRET=1`` (tests).
- ``cpu`` / ``cuda``: the C++ and CUDA kernels of ``csrc/`` through the
  compiled extensions ``ddm_fast._C`` / ``ddm_fast._C_cuda``
  (:mod:`.extension`).

Default per tensor device: CPU -> ``cpu`` (else ``reference``); CUDA ->
``triton`` (else ``cuda``, else ``reference``). Force one with
``with ddm_fast.backends.use("cuda"):`` or the environment variable
``DDM_FAST_BACKEND``; the context manager wins over the variable. A forced
backend that cannot run raises :class:`BackendUnavailableError`.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch

__all__ = ["NAMES", "REGISTRY", "available", "use", "current", "get",
           "BackendUnavailableError", "why_unavailable", "required"]


class Backend(NamedTuple):
    module: str                   # implements the four primitives
    devices: Tuple[str, ...]      # tensor device types it runs


REGISTRY: Dict[str, Backend] = {
    "reference": Backend("ddm_fast.backends.reference", ("cpu", "cuda")),
    "triton": Backend("ddm_fast.backends.triton_kernels", ("cuda", "cpu")),
    "cpu": Backend("ddm_fast.backends.extension", ("cpu",)),
    "cuda": Backend("ddm_fast.backends.extension", ("cuda",)),
}
NAMES = tuple(REGISTRY)
ENV_VAR = "DDM_FAST_BACKEND"
REQUIRED_ENV_VAR = "DDM_FAST_REQUIRE_BACKENDS"
# default order per device type
_DEFAULT_ORDER = {"cpu": ("cpu", "reference"),
                  "cuda": ("triton", "cuda", "reference")}


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run on this machine or for these tensors."""


_local = threading.local()


def _forced_stack() -> List[str]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _check_name(name: str) -> str:
    if name not in REGISTRY:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")
    return name


def _module(name: str):
    return importlib.import_module(REGISTRY[name].module)


def why_unavailable(name: str) -> Optional[str]:
    """None if backend ``name`` can run here, else the reason it cannot."""
    _check_name(name)
    try:
        module = _module(name)
    except ImportError as exc:  # a missing optional dependency
        return f"importing {REGISTRY[name].module} failed: {exc}"
    return module.why_unavailable(name)


def available() -> List[str]:
    """Backends usable on this machine."""
    return [n for n in NAMES if why_unavailable(n) is None]


def required() -> List[str]:
    """Backends this machine declares it must have (``DDM_FAST_REQUIRE_BACKENDS``,
    comma-separated; set by the test scripts): the test suite fails when one
    of them is unavailable instead of skipping its tests."""
    names = [n.strip() for n in os.environ.get(REQUIRED_ENV_VAR, "").split(",")
             if n.strip()]
    for n in names:
        _check_name(n)
    return names


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
        if env not in REGISTRY:
            raise ValueError(f"{ENV_VAR}={env!r} is not a backend; expected one "
                             f"of {NAMES}")
        return env
    return None


_default_cache: Dict[str, str] = {}


def _default(device_type: str) -> str:
    if device_type not in _default_cache:
        choice = "reference"
        for name in _DEFAULT_ORDER.get(device_type, ()):
            if why_unavailable(name) is None:
                choice = name
                break
        _default_cache[device_type] = choice
    return _default_cache[device_type]


_checked: Dict[str, object] = {}


def _check_runnable(name: str, device_type: str) -> None:
    """Import backend ``name`` once; check it can run on ``device_type``."""
    if name not in _checked:
        reason = why_unavailable(name)
        if reason is not None:
            raise BackendUnavailableError(
                f"backend {name!r} is unavailable: {reason}")
        _checked[name] = _module(name)
    if device_type not in REGISTRY[name].devices:
        raise BackendUnavailableError(
            f"backend {name!r} cannot run tensors on {device_type}; it runs "
            f"{' or '.join(REGISTRY[name].devices)} tensors")


@torch.compiler.assume_constant_result
def _resolve(device_type: str) -> str:
    # Constant under torch.compile: the choice (and the import of the chosen
    # backend) happens once per trace, in Python, never inside a graph.
    forced = _forced()
    name = forced if forced is not None else _default(device_type)
    _check_runnable(name, device_type)
    return name


def current(device) -> str:
    """Name of the backend that runs ops on ``device``."""
    return _resolve(torch.device(device).type)


def get(device):
    """The backend module for tensors on ``device``."""
    return _checked[_resolve(torch.device(device).type)]
