"""Backend selection: defaults, forcing, and clear errors."""
import pytest
import torch

from ddm_fast import backends, ops


def test_required_backends_are_available():
    """The backends this machine declares (DDM_FAST_REQUIRE_BACKENDS, set by
    scripts/test.sh: reference, triton and cpu on CI) must all run: a kernel
    that fails to build or import fails the suite here, with the reason."""
    missing = {name: backends.why_unavailable(name)
               for name in backends.required()
               if backends.why_unavailable(name) is not None}
    assert not missing, f"required backends unavailable: {missing}"


def test_required_backends_are_declared_by_the_test_script():
    import os
    if os.environ.get("CI"):
        assert {"reference", "triton", "cpu"} <= set(backends.required())


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


def test_forced_unavailable_backend_says_why(monkeypatch):
    """An extension that is missing or stale makes its backend unavailable
    with a sentence (simulated: the CPU module's API version is wrong)."""
    from ddm_fast.backends import extension
    monkeypatch.setattr(extension, "_loaded", {})
    monkeypatch.setattr(extension, "API_VERSION", -7)
    monkeypatch.setattr(backends, "_checked", {})
    assert "kernel API" in backends.why_unavailable("cpu")
    with pytest.raises(backends.BackendUnavailableError,
                       match="'cpu' is unavailable: .*stale build"):
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
