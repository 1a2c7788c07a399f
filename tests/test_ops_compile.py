"""The fused ops under ``torch.compile(fullgraph=True)`` and ``opcheck``.

A training loss (diffuse -> network -> diffusion loss, forward and backward)
is compiled with Inductor, the default ``torch.compile`` backend, on every
backend that can run on fake tensors: the primitives are opaque custom ops
(``triton_op`` for Triton, whose kernels Inductor sees), so Inductor never
lowers the Philox chain itself and compiles in seconds. The Triton
interpreter cannot run on fake tensors, so Triton is compiled on CUDA only.
``opcheck`` runs every check on every backend's ops (schema, autograd
registration, fake tensors, AOT dispatch), Triton's fake/AOT checks on CUDA.
"""
from __future__ import annotations

import pytest
import torch

from ddm_fast.loss import diffusion_loss

from ddm_fast import backends, ops
from ddm_fast.ops import library
from conftest import BACKENDS, HAS_CUDA, device_for

SEED, OFFSET = 2 ** 33 + 17, 6


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
    compiled = torch.compile(training_loss, fullgraph=True)
    args = _inputs(device)
    with backends.use(backend_name):
        eager = _run(training_loss, *args)
        got = _run(compiled, *args)
    for name, a, b in zip(["loss", "per_sample", "d latent", "d weight",
                           "d gamma"], got, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{name}: {m}")


COMPILABLE = [name for name in BACKENDS if name != "triton" or HAS_CUDA]


@pytest.mark.parametrize("backend_name", COMPILABLE)
def test_compile_fullgraph_inductor_matches_eager(backend_name):
    _compare_compiled(backend_name, device_for(backend_name))


# ---------------------------------------------------------------- opcheck
FAKE_SAFE = [name for name in BACKENDS if name != "triton" or HAS_CUDA]
CPU_TRITON_OPCHECK_TESTS = ("test_schema", "test_autograd_registration")


def _opcheck_cases(device):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, generator=gen).to(device)
    y = torch.randn(2, 3, 5, generator=gen).to(device).requires_grad_()
    coeffs = torch.randn(2, 4, generator=gen).to(device).requires_grad_()
    coeffs_nb = torch.randn(2, 3, generator=gen).to(device)
    mask = (torch.rand(1, 3, 5, generator=gen) > 0.3).to(torch.uint8).to(device)
    f32 = torch.float32
    return {
        "affine": (x, y, None, coeffs, coeffs.detach() * 2, mask, 5, 3, True, f32),
        "affine_nonoise": (x, y, None, coeffs_nb, None, None, -1, 0, True, f32),
        "affine_sum": (x, y, None, coeffs, mask, 5, 3, 2, True),
        "affine_sum_p1": (x, y, None, coeffs_nb, mask, -1, 0, 1, True),
        "affine_dots": (x, y.detach(), None, x, coeffs.detach(), mask, 5, 3,
                        True, 1),
        "randn": (10, 5, 3, torch.float32, torch.device(device)),
    }


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("case", ["affine", "affine_nonoise", "affine_sum",
                                  "affine_sum_p1", "affine_dots", "randn"])
def test_opcheck(backend_name, case):
    device = device_for(backend_name)
    args = _opcheck_cases(device)[case]
    prims = library.primitives(backend_name)
    op = getattr(prims, case.replace("_nonoise", "").replace("_p1", ""))
    if backend_name in FAKE_SAFE:
        torch.library.opcheck(op, args)
    else:
        # test_faketensor / test_aot_dispatch_* need the kernels to run on
        # fake tensors, which the interpreter cannot: CUDA only
        torch.library.opcheck(op, args, test_utils=CPU_TRITON_OPCHECK_TESTS)
