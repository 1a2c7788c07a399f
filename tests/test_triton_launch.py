"""How the Triton backend launches, checked without a GPU.

Two bugs only a GPU shows: a launch on the current CUDA device instead of the
tensors' device (tensors on cuda:1 while cuda:0 is current), and a seed that
Triton specialises on (32/64-bit, divisible by 16, equal to 1), so that the
same kernel is recompiled at random moments of a run. Both are checked here
by construction; the two-device launch runs where two GPUs exist.
"""
import ast
import inspect

import pytest
import torch

from ddm_fast.backends import triton_kernels
from ddm_fast.kernels import affine, affine_sum, randn

pytestmark = pytest.mark.skipif(
    triton_kernels._STATIC_REASON is not None,
    reason=f"triton backend absent: {triton_kernels._STATIC_REASON}")


def _launch_calls(tree):
    """Calls of the form wrap_triton(kernel)[grid](...)."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
                and isinstance(node.func.value, ast.Call)
                and getattr(node.func.value.func, "id", None) == "wrap_triton"):
            yield node


def test_every_launch_sits_inside_a_device_guard():
    tree = ast.parse(inspect.getsource(triton_kernels))
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any(
                isinstance(item.context_expr, ast.Call)
                and getattr(item.context_expr.func, "id", None) == "_on"
                for item in node.items):
            guarded |= {id(call) for call in _launch_calls(node)}
    launches = list(_launch_calls(tree))
    assert len(launches) >= 4  # randn, affine, row reduce, sum partials
    unguarded = [call.lineno for call in launches if id(call) not in guarded]
    assert not unguarded, f"launches outside `with _on(device)`: lines {unguarded}"


def test_guard_selects_the_tensors_device():
    guard = triton_kernels._on(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    # CPU tensors (the interpreter) need no guard
    with triton_kernels._on(torch.device("cpu")):
        pass


def test_launches_are_guarded_with_their_inputs_device(monkeypatch):
    seen = []
    real_on = triton_kernels._on

    def recording_on(device):
        seen.append(torch.device(device))
        return real_on(device)

    monkeypatch.setattr(triton_kernels, "_on", recording_on)
    x = torch.randn(3, 4097)  # several blocks per row: both reduction stages
    coeffs = torch.ones(3, 2)
    triton_kernels.randn(10, 1, 0, torch.float32, x.device)
    triton_kernels.affine(x, None, None, coeffs, None, None, 7, 0, False,
                          torch.float32)
    triton_kernels.affine_sum(x, None, None, coeffs, None, 7, 0, 2, False)
    assert len(seen) >= 4 and all(device == x.device for device in seen)


@pytest.mark.parametrize("kernel", [randn.randn_kernel, affine.affine_kernel,
                                    affine_sum.row_reduce_kernel])
def test_seed_and_offset_are_not_specialised(kernel):
    if not hasattr(kernel, "params"):
        # the interpreter keeps the function and the @jit options apart:
        # rebuild the JITFunction a GPU run would get from them
        from triton.runtime.jit import JITFunction
        kernel = JITFunction(kernel.fn, **kernel.kwargs)
    jit = kernel
    flags = {param.name: param.do_not_specialize for param in jit.params}
    for name in ("seed", "offset"):
        assert flags[name], f"{name} of {jit.__name__} is JIT-specialised"
    if "first_counter" in flags:
        assert flags["first_counter"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_launch_on_second_device_while_first_is_current():
    from ddm_fast import backends, ops
    x = torch.randn(4, 1000, device="cuda:1")
    with torch.cuda.device(0), backends.use("triton"):
        out = ops.diffuse(x, torch.full((4,), 0.3, device="cuda:1"), seed=3)
        torch.cuda.synchronize(1)
    with backends.use("reference"):
        expected = ops.diffuse(x, torch.full((4,), 0.3, device="cuda:1"), seed=3)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_no_timing_based_autotuning(monkeypatch):
    """Autotuning benchmarks configurations with host synchronisations on
    the first call of every size (impossible inside CUDA-graph capture); the
    launch configuration is a pure function of the shape instead."""
    from ddm_fast.kernels import common
    from triton.runtime.autotuner import Autotuner
    kernels = [randn.randn_kernel, affine.affine_kernel,
               affine_sum.row_reduce_kernel, affine_sum.sum_partials_kernel]
    assert not any(isinstance(k, Autotuner) for k in kernels)
    monkeypatch.setattr(common, "INTERPRETING", False)  # the GPU choice
    for numel in (1, 40 * 1024, 2 ** 24 + 3):
        assert common.elementwise_launch(numel) == common.elementwise_launch(numel)
        counters, warps = common.elementwise_launch(numel)
        # no configuration computes a Philox counter twice
        assert counters >= 32 * warps, (numel, counters, warps)
        assert common.sub_counters(counters, warps) == 32 * warps
