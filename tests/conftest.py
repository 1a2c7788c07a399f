"""Shared fixtures of the test suite.

Without a CUDA device the Triton kernels run in Triton's NumPy interpreter,
which must be switched on before Triton is imported: that happens here, at
collection time, before any test module imports ddm_fast's kernels.

Fixtures:

- ``backend``: every backend usable here (``ddm_fast.backends.available()``,
  which includes ``triton`` on CPU through the interpreter) or required
  here (``DDM_FAST_REQUIRE_BACKENDS``), forced with ``backends.use`` for the
  duration of the test.
- ``fast_backend``: the same without ``reference`` (tests comparing a backend
  with the reference oracle).
- ``device``: where the tensors of a test live (CUDA when present, CPU for
  the ``cpu`` backend).

``TOLERANCES`` and :func:`assert_close` give per-dtype (atol, rtol).
"""
from __future__ import annotations

import os
import sys

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") is None:
    if "triton" in sys.modules:  # too late: kernels would compile for a GPU
        raise RuntimeError("tests/conftest.py must set TRITON_INTERPRET=1 "
                           "before triton is imported")
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from ddm_fast import backends  # noqa: E402

# Every backend usable here, plus every backend this machine declares it
# must have (DDM_FAST_REQUIRE_BACKENDS, set by scripts/test.sh): a required
# backend that fails to build or import makes its tests fail, never skip.
BACKENDS = [name for name in backends.NAMES
            if name in backends.available() or name in backends.required()]
FAST_BACKENDS = [name for name in BACKENDS if name != "reference"]

# (atol, rtol) per dtype for element-wise results; sums over many elements
# use a relative tolerance on the result's magnitude in the tests.
TOLERANCES = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (2e-6, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def assert_close(actual, expected, dtype=None, scale=1.0, msg=""):
    """torch.testing.assert_close with the tolerance of ``dtype`` (default:
    that of ``expected``); ``scale`` widens it (e.g. for long sums)."""
    dtype = dtype if dtype is not None else expected.dtype
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(actual, expected, atol=atol * scale,
                               rtol=rtol * scale, check_dtype=False, msg=msg)


def device_for(backend_name: str) -> torch.device:
    if backend_name == "cpu":
        return torch.device("cpu")
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(params=BACKENDS)
def backend(request):
    with backends.use(request.param):
        yield request.param


@pytest.fixture(params=FAST_BACKENDS or [None])
def fast_backend(request):
    if request.param is None:
        pytest.skip("only the reference backend is available here")
    with backends.use(request.param):
        yield request.param


@pytest.fixture
def device(request):
    for name in ("backend", "fast_backend"):
        if name in request.fixturenames:
            return device_for(request.getfixturevalue(name))
    return torch.device("cuda" if HAS_CUDA else "cpu")
