"""OptimalModel (docs/math.md, "The optimal denoiser"): streamed empirical
denoiser against brute force."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ddm_fast.optimal_model import OptimalModel
from ddm_fast.utils import alpha_sigma

# (atol, rtol) of the streamed result against a float64 brute force.
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-4, 2e-4)}

N, C, H, W = 37, 2, 3, 4


def brute_force(data, z, gamma, mask=None, dims=(-3, -2, -1)):
    """x_hat with the full B x N x D tensor, in float64 (the oracle)."""
    data = data.double()
    z = z.double()
    gamma = gamma.double()
    alpha, _ = alpha_sigma(gamma)
    view = (-1,) + (1,) * (z.ndim - 1)
    exploded = z / alpha.reshape(view)
    diff = exploded[:, None] - data[None]                     # (B, N, ...)
    if mask is not None:
        diff = diff * (mask != 0).double()[:, None] if mask.ndim == z.ndim \
            else diff * (mask != 0).double()
    sum_dims = tuple(d if d < 0 else d + 1 for d in dims)
    sq_dist = diff.square().sum(dim=sum_dims, keepdim=True)
    var = torch.exp(-gamma).reshape((-1, 1) + (1,) * (z.ndim - 1))
    weights = torch.softmax(-sq_dist / (2 * var), dim=1)
    out = (weights * data[None]).sum(dim=1)
    if mask is not None:
        out = out * (mask != 0)
    return out


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)


def _noised(data, gamma, gen, batch_index=(3, 10, 20, 0)):
    """z = alpha x + sigma eps around some training samples."""
    x = data[list(batch_index)] + 0.3 * torch.randn(
        len(batch_index), C, H, W, generator=gen, dtype=data.dtype)
    alpha, sigma = alpha_sigma(gamma)
    eps = torch.randn(x.shape, generator=gen, dtype=data.dtype)
    return alpha.view(-1, 1, 1, 1) * x + sigma.view(-1, 1, 1, 1) * eps


GAMMAS = {
    "low": [-10.0] * 4,
    "zero": [0.0] * 4,
    "high": [10.0] * 4,
    "mixed": [-10.0, -2.5, 4.0, 10.0],
}


def _mask(kind, batch, gen):
    if kind == "none":
        return None
    if kind == "shared":
        return torch.rand(1, 1, H, W, generator=gen) > 0.3
    return (torch.rand(batch, C, H, W, generator=gen) > 0.3).float()


@pytest.mark.parametrize("gammas", sorted(GAMMAS))
@pytest.mark.parametrize("mask_kind", ["none", "shared", "per_sample"])
@pytest.mark.parametrize("chunk", [1, 4, 7, N, 100])
def test_matches_brute_force(data, gammas, mask_kind, chunk):
    gen = torch.Generator().manual_seed(2)
    gamma = torch.tensor(GAMMAS[gammas], dtype=torch.float64)
    z = _noised(data, gamma, gen)
    mask = _mask(mask_kind, z.shape[0], gen)
    model = OptimalModel(data, chunk_size=chunk)
    atol, rtol = TOL[torch.float64]
    torch.testing.assert_close(model.denoise(z, gamma, mask),
                               brute_force(data, z, gamma, mask),
                               atol=atol, rtol=rtol)


def test_float32_data_matches_float64_oracle(data):
    gen = torch.Generator().manual_seed(3)
    gamma = torch.tensor([-8.0, -1.0, 2.0, 5.0])
    z = _noised(data.float(), gamma, gen)
    mask = _mask("shared", 4, gen)
    model = OptimalModel(data.float(), chunk_size=5)
    out = model.denoise(z, gamma, mask)
    assert out.dtype == torch.float32
    atol, rtol = TOL[torch.float32]
    torch.testing.assert_close(out.double(), brute_force(data, z, gamma, mask),
                               atol=atol, rtol=rtol)


def test_gamma_shapes_are_per_sample(data):
    gen = torch.Generator().manual_seed(4)
    gamma = torch.tensor([-6.0, 0.5, 3.0, 9.0], dtype=torch.float64)
    z = _noised(data, gamma, gen)
    model = OptimalModel(data, chunk_size=6)
    flat = model.denoise(z, gamma)
    torch.testing.assert_close(model.denoise(z, gamma.view(-1, 1, 1, 1)), flat)
    # Each sample uses its own gamma: equal to denoising it alone.
    for b in range(4):
        torch.testing.assert_close(model.denoise(z[b:b + 1], gamma[b:b + 1]),
                                   flat[b:b + 1])


def test_group_dims_match_brute_force(data):
    """dims=(-2, -1): a separate softmax per channel (toolbox semantics)."""
    gen = torch.Generator().manual_seed(5)
    gamma = torch.tensor([-3.0, 0.0, 2.0, 6.0], dtype=torch.float64)
    z = _noised(data, gamma, gen)
    mask = _mask("per_sample", 4, gen)
    for dims in [(-2, -1), (2, 3), (-3, -1)]:
        model = OptimalModel(data, dims=dims, chunk_size=8)
        torch.testing.assert_close(
            model.denoise(z, gamma, mask),
            brute_force(data, z, gamma, mask, dims=dims), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mask_kind", ["none", "shared"])
def test_high_gamma_returns_nearest_sample(data, mask_kind):
    gen = torch.Generator().manual_seed(6)
    gamma = torch.full((4,), 30.0, dtype=torch.float64)
    z = _noised(data, gamma, gen)
    mask = _mask(mask_kind, 4, gen)
    valid = torch.ones(1, C, H, W) if mask is None else mask.double()
    alpha, _ = alpha_sigma(gamma)
    exploded = z / alpha.view(-1, 1, 1, 1)
    distances = ((exploded[:, None] - data[None]) * valid).square().sum((2, 3, 4))
    nearest = data[distances.argmin(dim=1)] * valid
    out = OptimalModel(data, chunk_size=5).denoise(z, gamma, mask)
    torch.testing.assert_close(out, nearest, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mask_kind", ["none", "shared", "per_sample"])
def test_low_gamma_returns_mean(data, mask_kind):
    gen = torch.Generator().manual_seed(7)
    # x_hat - mean = O(e^{gamma/2} |z| |x|): about 1e-11 at gamma = -55.
    gamma = torch.full((4,), -55.0, dtype=torch.float64)
    z = _noised(data, gamma, gen)
    mask = _mask(mask_kind, 4, gen)
    expected = data.mean(dim=0, keepdim=True).expand(4, C, H, W)
    if mask is not None:
        expected = expected * (mask != 0)
    out = OptimalModel(data, chunk_size=9).denoise(z, gamma, mask)
    torch.testing.assert_close(out, expected, atol=1e-9, rtol=0)


def test_all_masked_gives_zero_not_nan(data):
    z = torch.randn(2, C, H, W, dtype=torch.float64)
    mask = torch.zeros(1, 1, H, W, dtype=torch.bool)
    model = OptimalModel(data, chunk_size=4)
    out = model.denoise(z, torch.tensor([0.0, 5.0], dtype=torch.float64), mask)
    assert torch.equal(out, torch.zeros_like(out))
    eps = model(z, torch.tensor([0.2, 0.9], dtype=torch.float64), mask)
    assert torch.equal(eps, torch.zeros_like(eps))


def test_forward_returns_implied_noise(data):
    gen = torch.Generator().manual_seed(8)
    model = OptimalModel(data, gamma_min=-12.0, gamma_max=8.0, chunk_size=10)
    normalized = torch.tensor([0.05, 0.4, 0.7, 0.95], dtype=torch.float64)
    gamma = normalized * 20.0 - 12.0
    z = _noised(data, gamma, gen)
    mask = _mask("shared", 4, gen)
    alpha, sigma = alpha_sigma(gamma)
    x_hat = brute_force(data, z, gamma, mask)
    expected = (z - alpha.view(-1, 1, 1, 1) * x_hat) / sigma.view(-1, 1, 1, 1)
    expected = expected * mask
    torch.testing.assert_close(model(z, normalized, mask), expected,
                               atol=1e-9, rtol=1e-9)
    # The toolbox used only normalized_gamma[0]; here each sample has its own.
    first_only = model(z, normalized[:1].expand(4), mask)
    assert not torch.allclose(first_only, expected)


def test_toolbox_optimal_denoiser_name(data):
    gen = torch.Generator().manual_seed(9)
    gamma = torch.tensor([1.5, 1.5, 1.5, 1.5], dtype=torch.float64)
    z = _noised(data, gamma, gen)
    alpha, _ = alpha_sigma(gamma)
    model = OptimalModel(data, chunk_size=3)
    state = z / alpha.view(-1, 1, 1, 1)
    out = model.optimal_denoiser(state, torch.exp(-gamma[0]), None)
    torch.testing.assert_close(out, brute_force(data, z, gamma),
                               atol=1e-10, rtol=1e-10)


class _MaxNumel(TorchDispatchMode):
    """Record the largest tensor produced by any aten op."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return out


def test_memory_stays_bounded_by_chunk():
    n_big, batch, chunk = 4000, 3, 8
    features = 2 * 4 * 4
    data = torch.randn(n_big, 2, 4, 4)
    model = OptimalModel(data, chunk_size=chunk)
    z = torch.randn(batch, 2, 4, 4)
    mask = torch.rand(1, 1, 4, 4) > 0.2
    with _MaxNumel() as tracker:
        model.denoise(z, torch.tensor([-2.0, 0.0, 3.0]), mask)
    bound = 2 * max(batch * features, chunk * features, batch * chunk)
    assert tracker.largest <= bound, (tracker.largest, bound)
    assert tracker.largest < n_big          # nothing even O(N) per call


def test_training_data_is_a_non_persistent_buffer(data):
    model = OptimalModel(data)
    assert "training_data" not in model.state_dict()
    assert any(name == "training_data" for name, _ in model.named_buffers())
    assert model.to(torch.float32).training_data.dtype == torch.float32


def test_errors(data):
    with pytest.raises(ValueError, match="chunk_size"):
        OptimalModel(data, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size"):
        OptimalModel(data, chunk_size=2.5)
    with pytest.raises(TypeError, match="training_data"):
        OptimalModel(data.long())
    with pytest.raises(ValueError, match="training_data"):
        OptimalModel(data[:0])
    with pytest.raises(ValueError, match="gamma_min"):
        OptimalModel(data, gamma_min=5, gamma_max=5)
    with pytest.raises(ValueError, match="dims"):
        OptimalModel(data, dims=(-4,))
    with pytest.raises(ValueError, match="dims"):
        OptimalModel(data, dims=(0,))
    with pytest.raises(ValueError, match="dims"):
        OptimalModel(data, dims=(-1, 3))
    with pytest.raises(TypeError, match="dims"):
        OptimalModel(data, dims="abc")
    model = OptimalModel(data, chunk_size=4)
    gamma = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="training_data"):
        model.denoise(torch.zeros(2, C, H, W + 1, dtype=torch.float64), gamma)
    with pytest.raises(ValueError, match="training_data"):
        model.denoise(torch.zeros(2, H, W, dtype=torch.float64), gamma)
    with pytest.raises(ValueError, match="gamma"):
        model.denoise(torch.zeros(2, C, H, W, dtype=torch.float64),
                      torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="mask"):
        model.denoise(torch.zeros(2, C, H, W, dtype=torch.float64), gamma,
                      torch.ones(1, 1, H + 1, W))
    with pytest.raises(TypeError, match="in_tensor"):
        model(torch.zeros(2, C, H, W, dtype=torch.long), gamma)


def test_nan_under_the_mask_never_reaches_the_result():
    torch.manual_seed(3)
    data = torch.randn(12, 1, 3, 4, dtype=torch.float64)
    mask = torch.ones(1, 1, 3, 4, dtype=torch.bool)
    mask[..., 0, :2] = False
    z = torch.randn(2, 1, 3, 4, dtype=torch.float64)
    clean = OptimalModel(data)
    want = clean.denoise(z, torch.tensor([0., 2.]), mask)
    want_eps = clean(z, torch.tensor([0.3, 0.6]), mask)
    data_nan, z_nan = data.clone(), z.clone()
    data_nan[:, ~mask[0]] = float("nan")
    z_nan[:, ~mask[0]] = float("nan")
    model = OptimalModel(data_nan)
    got = model.denoise(z_nan, torch.tensor([0., 2.]), mask)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(model(z_nan, torch.tensor([0.3, 0.6]), mask),
                               want_eps)
    with pytest.raises(ValueError, match="mask"):
        model.denoise(z, torch.tensor([0., 2.]))
