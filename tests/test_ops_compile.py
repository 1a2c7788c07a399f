"""The fused ops under ``torch.compile(fullgraph=True)`` and ``opcheck``.

On CPU the training loss is compiled with the reference backend (the Triton
interpreter cannot run on fake tensors) through ``aot_eager``, which traces
forward and backward exactly as Inductor would see them and fails on any
graph break; Inductor itself is used on CUDA, where the triton backend is
compiled too. ``opcheck`` of the custom ops runs its schema and autograd
registration tests everywhere and the fake-tensor / AOT tests on CUDA.
"""
from __future__ import annotations

import pytest
import torch

from ddm_fast.loss import diffusion_loss

from ddm_fast import backends, ops
from conftest import HAS_CUDA

SEED, OFFSET = 2 ** 33 + 17, 6
COMPILER = "inductor" if HAS_CUDA else "aot_eager"


def training_loss(latent, net_weight, gamma, mask):
    """diffuse -> a one-parameter "network" -> the diffusion loss."""
    z = ops.diffuse(latent, gamma, SEED, mask, offset=OFFSET)
    prediction = z * net_weight
    loss, per_sample = diffusion_loss(prediction, latent, gamma, SEED, mask,
                                          param="v", weighting=None,
                                          offset=OFFSET)
    return loss, per_sample


def _inputs(device):
    gen = torch.Generator().manual_seed(0)
    latent = torch.randn(3, 2, 6, 5, generator=gen).to(device)
    mask = (torch.rand(1, 1, 6, 5, generator=gen) > 0.3).to(device)
    gamma = torch.tensor([-4.0, 0.5, 3.0], device=device)
    return latent, torch.tensor(0.8, device=device), gamma, mask


def _run(fn, latent, weight, gamma, mask):
    latent = latent.clone().requires_grad_()
    weight = weight.clone().requires_grad_()
    gamma = gamma.clone().requires_grad_()
    loss, per_sample = fn(latent, weight, gamma, mask)
    grads = torch.autograd.grad(loss, [latent, weight, gamma])
    return [loss, per_sample, *grads]


def _compare_compiled(backend_name, device):
    torch._dynamo.reset()
    compiled = torch.compile(training_loss, fullgraph=True, backend=COMPILER)
    args = _inputs(device)
    with backends.use(backend_name):
        eager = _run(training_loss, *args)
        got = _run(compiled, *args)
    for name, a, b in zip(["loss", "per_sample", "d latent", "d weight",
                           "d gamma"], got, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{name}: {m}")


def test_compile_fullgraph_reference_matches_eager():
    _compare_compiled("reference", torch.device("cuda" if HAS_CUDA else "cpu"))


@pytest.mark.skipif(not HAS_CUDA, reason="the triton backend compiles only on "
                    "CUDA (the interpreter cannot run on fake tensors)")
def test_compile_fullgraph_triton_matches_eager():
    _compare_compiled("triton", torch.device("cuda"))


# ---------------------------------------------------------------- opcheck
needs_triton = pytest.mark.skipif("triton" not in backends.available(),
                                  reason="the triton backend is unavailable")
CPU_OPCHECK_TESTS = ("test_schema", "test_autograd_registration")


def _opcheck_cases(device):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, generator=gen).to(device)
    y = torch.randn(2, 3, 5, generator=gen).to(device).requires_grad_()
    coeffs = torch.randn(2, 4, generator=gen).to(device).requires_grad_()
    coeffs_nb = torch.randn(2, 3, generator=gen).to(device)
    mask = (torch.rand(1, 3, 5, generator=gen) > 0.3).to(torch.uint8).to(device)
    return {
        "affine_triton": (x, y, None, coeffs, coeffs.detach() * 2, mask, 5, 3, True),
        "affine_triton_nonoise": (x, y, None, coeffs_nb, None, None, -1, 0, True),
        "affine_sum_triton": (x, y, None, coeffs, mask, 5, 3, 2, True),
        "affine_sum_triton_p1": (x, y, None, coeffs_nb, mask, -1, 0, 1, True),
        "affine_dots_triton": (x, y.detach(), None, x, coeffs.detach(), mask, 5,
                               3, True, 1),
        "randn_triton": (10, 5, 3, torch.float32, torch.device(device)),
    }


@needs_triton
@pytest.mark.parametrize("case", ["affine_triton", "affine_triton_nonoise",
                                  "affine_sum_triton", "affine_sum_triton_p1",
                                  "affine_dots_triton", "randn_triton"])
def test_opcheck(case):
    device = "cuda" if HAS_CUDA else "cpu"
    args = _opcheck_cases(device)[case]
    op = getattr(torch.ops.ddm_fast, case.split("_triton")[0] + "_triton")
    if HAS_CUDA:
        torch.library.opcheck(op, args)
    else:
        # test_faketensor / test_aot_dispatch_* need the kernels to run on
        # fake tensors, which the interpreter cannot: CUDA only
        torch.library.opcheck(op, args, test_utils=CPU_OPCHECK_TESTS)
