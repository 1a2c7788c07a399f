"""Backend selection: defaults, forcing, and clear errors."""
import pytest
import torch

from ddm_fast import backends, ops


def test_reference_always_available():
    assert "reference" in backends.available()
    assert backends.why_unavailable("reference") is None


def test_default_for_cpu_tensors():
    expected = "cpu" if "cpu" in backends.available() else "reference"
    assert backends.current("cpu") == expected


def test_use_forces_and_restores():
    before = backends.current("cpu")
    with backends.use("reference"):
        assert backends.current("cpu") == "reference"
        assert backends.current(torch.device("cpu")) == "reference"
    assert backends.current("cpu") == before


def test_environment_variable_forces(monkeypatch):
    monkeypatch.setenv("DDM_FAST_BACKEND", "reference")
    assert backends.current("cpu") == "reference"
    monkeypatch.setenv("DDM_FAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="DDM_FAST_BACKEND='nonsense' is not a backend"):
        backends.current("cpu")


def test_context_wins_over_environment(monkeypatch):
    monkeypatch.setenv("DDM_FAST_BACKEND", "cuda")
    with backends.use("reference"):
        assert backends.current("cpu") == "reference"


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        with backends.use("opencl"):
            pass


@pytest.mark.skipif("cpu" in backends.available(), reason="C++ extension built")
def test_forced_unavailable_backend_says_why(monkeypatch):
    with pytest.raises(backends.BackendUnavailableError, match="'cpu' is unavailable: .*_C"):
        with backends.use("cpu"):
            pass
    monkeypatch.setenv("DDM_FAST_BACKEND", "cpu")
    with pytest.raises(backends.BackendUnavailableError, match="'cpu' is unavailable"):
        ops.randn((4,), seed=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_backend_cannot_run_cpu_tensors(monkeypatch):
    monkeypatch.setenv("DDM_FAST_BACKEND", "cuda")
    with pytest.raises(backends.BackendUnavailableError, match="cuda"):
        ops.diffuse(torch.randn(2, 3), torch.zeros(2), 1)


def test_available_lists_only_runnable_backends():
    for name in backends.NAMES:
        assert (name in backends.available()) == (backends.why_unavailable(name) is None)
