"""Low precision: a fused op may be at most 2x as far from a float64 truth
as PyTorch's own eager ops in that precision (float32 math inside the
kernels, one rounding at the end)."""
import pytest
import torch

from ddm_fast.loss import diffusion_loss

from ddm_fast import ops
from conftest import HAS_CUDA


def _low_precision_dtypes(backend_name):
    dtypes = [torch.float16]
    if backend_name != "triton" or HAS_CUDA:  # the interpreter's bfloat16 is unreliable
        dtypes.append(torch.bfloat16)
    return dtypes


def _error(actual, truth, mask):
    return ((actual.double() - truth) * mask).abs().mean().item()


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_affine_step_error_within_twice_torch(backend, device, dtype_name):
    dtype = getattr(torch, dtype_name)
    if dtype not in _low_precision_dtypes(backend):
        pytest.skip(f"{dtype_name} is not tested on the interpreter")
    gen = torch.Generator().manual_seed(0)
    shape = (4, 3, 17, 19)
    xs = [torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
          for _ in range(3)]
    coeffs = (torch.rand(4, 3, generator=gen) * 2 - 1).to(device)
    mask = (torch.rand(1, 1, 17, 19, generator=gen) > 0.3).to(device)
    view = (4, 1, 1, 1)
    truth = sum(coeffs[:, k].double().view(view) * xs[k].double() for k in range(3))
    truth = truth * mask
    c_low = coeffs.to(dtype)
    eager = sum(c_low[:, k].view(view) * xs[k] for k in range(3)) * mask
    fused = ops.affine(xs, coeffs, mask)
    assert fused.dtype == dtype
    err_fused, err_eager = _error(fused, truth, mask), _error(eager, truth, mask)
    assert err_eager > 0
    assert err_fused <= 2 * err_eager, (err_fused, err_eager)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_loss_error_within_twice_torch(backend, device, dtype_name):
    dtype = getattr(torch, dtype_name)
    if dtype not in _low_precision_dtypes(backend):
        pytest.skip(f"{dtype_name} is not tested on the interpreter")
    gen = torch.Generator().manual_seed(1)
    shape = (4, 2, 23, 29)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    f = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    gamma = torch.tensor([-4.0, -1.0, 1.0, 4.0], device=device)
    seed = 99
    eps = ops.randn(shape, seed, dtype=torch.float64, device=device)
    truth = ((f.double() - eps) ** 2).mean()
    eager = ((f - eps.to(dtype)) ** 2).mean()  # users' eager eps-loss in that dtype
    fused, _ = diffusion_loss(f, x, gamma, seed)
    err_fused = abs(fused.double().item() - truth.item())
    err_eager = abs(eager.double().item() - truth.item())
    # the fused loss accumulates in float32: far below the eager error
    assert err_fused <= 2 * max(err_eager, 1e-7 * truth.item()), (err_fused, err_eager)
