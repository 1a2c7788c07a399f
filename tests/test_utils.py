"""Masked utilities, time sampling and argument checks (docs/math.md,
"Masks" and "Stratified pseudo-times")."""
import pytest
import torch

from ddm_fast import ops
from ddm_fast.utils import (mask_count, masked_average, normalize_gamma,
                            sample_time)


def _explicit_mean(x, mask, dims):
    m = mask.expand_as(x).to(x.dtype)
    return (x * m).sum(dims) / (m.sum(dims) + 1e-9)


MASKS = {
    "broadcast_hw": lambda: torch.rand(1, 1, 5, 7) > 0.4,
    "per_sample": lambda: torch.rand(3, 1, 5, 7) > 0.4,
    "full_uint8": lambda: (torch.rand(3, 2, 5, 7) > 0.4).to(torch.uint8),
    "float": lambda: (torch.rand(1, 2, 1, 7) > 0.4).float(),
    "trailing_2d": lambda: torch.rand(5, 7) > 0.4,
}


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("dims", [None, (1, 2, 3), (2, 3), (0,), (0, 2)])
def test_masked_average_counts_broadcast_mask(mask_name, dims):
    torch.manual_seed(0)
    x = torch.randn(3, 2, 5, 7, dtype=torch.float64)
    mask = MASKS[mask_name]()
    got = masked_average(x, mask, dim=dims)
    all_dims = tuple(range(4)) if dims is None else dims
    torch.testing.assert_close(got, _explicit_mean(x, mask, all_dims))
    torch.testing.assert_close(ops.masked_mean(x, mask, dim=dims), got)


def test_all_masked_gives_zero_not_nan():
    x = torch.randn(2, 3, 4)
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    assert masked_average(x, mask).item() == 0.0
    per_sample = masked_average(x, mask, dim=(1, 2))
    assert torch.equal(per_sample, torch.zeros(2))
    assert torch.equal(ops.masked_mean(x, mask, dim=(1, 2)), torch.zeros(2))


def test_one_sample_all_masked():
    x = torch.randn(2, 4)
    mask = torch.tensor([[0, 0, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
    out = ops.masked_mean(x, mask, dim=1)
    assert out[0].item() == 0.0
    torch.testing.assert_close(out[1], x[1, [0, 2, 3]].mean(), rtol=1e-6, atol=1e-7)


def test_nan_under_land_does_not_leak():
    x = torch.tensor([[1.0, float("nan"), 3.0]])
    mask = torch.tensor([[1, 0, 1]])
    assert masked_average(x, mask).item() == pytest.approx(2.0)
    assert ops.masked_mean(x, mask).item() == pytest.approx(2.0)


def test_mask_none_is_plain_mean():
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(masked_average(x), x.mean() * 20 / (20 + 1e-9))
    torch.testing.assert_close(ops.masked_mean(x, dim=1), x.mean(1) * 5 / (5 + 1e-9))


def test_mask_count_without_expanding():
    mask = torch.tensor([[1, 0, 1]], dtype=torch.bool)  # (1, 3)
    assert mask_count(mask, (4, 3)).item() == 8
    torch.testing.assert_close(mask_count(mask, (4, 3), dim=1), torch.full((4,), 2.0))
    torch.testing.assert_close(mask_count(mask, (4, 3), dim=0),
                               torch.tensor([4.0, 0.0, 4.0]))
    torch.testing.assert_close(mask_count(None, (4, 3), dim=1), torch.full((4,), 3.0))


def test_mask_errors_name_the_argument():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="mask of shape \\(2, 4\\) does not broadcast"):
        masked_average(x, torch.ones(2, 4))
    with pytest.raises(ValueError, match="mask of shape"):
        masked_average(x, torch.ones(2, 2, 3, 4))  # would grow the data
    with pytest.raises(TypeError, match="mask must be"):
        masked_average(x, torch.ones(3, 4, dtype=torch.complex64))
    with pytest.raises(TypeError, match="in_tensor must be a torch.Tensor"):
        masked_average([1.0, 2.0])
    with pytest.raises(ValueError, match="dim 5 is out of range"):
        masked_average(x, dim=5)


def test_sample_time_is_stratified_uniform():
    template = torch.zeros(8, 3, 2)
    gen = torch.Generator().manual_seed(3)
    t = sample_time(template, generator=gen)
    assert t.shape == (8, 1, 1)
    assert ((t >= 0) & (t < 1)).all()
    # one point per stratum [k/8, (k+1)/8) once sorted
    sorted_t = t.flatten().sort().values
    strata = torch.floor(sorted_t * 8)
    assert torch.equal(strata, torch.arange(8.0)) or \
        len(torch.unique(strata)) == 8
    gaps = torch.diff(sorted_t)
    torch.testing.assert_close(gaps, torch.full((7,), 1 / 8))
    # the offset is uniform: over many draws its mean is 1/2 (a normal draw
    # wrapped mod 1, as in ddm_dynamical, is not uniform on [0, 1/8))
    offsets = torch.stack([sample_time(torch.zeros(1), generator=gen).flatten()
                           for _ in range(4000)])
    assert abs(offsets.mean().item() - 0.5) < 0.02
    counts = torch.histc(offsets, bins=4, min=0, max=1)
    assert (counts > 850).all()


def test_sample_time_errors():
    with pytest.raises(ValueError, match="template_tensor"):
        sample_time(torch.zeros(()))
    # an empty batch works: an empty tensor of times
    assert sample_time(torch.zeros(0, 3)).shape == (0, 1)


def test_normalize_gamma():
    # the library's one default range, (-10, 10) (ddm_fast.denoiser)
    assert normalize_gamma(-10.0) == 0.0
    assert normalize_gamma(10.0) == 1.0
    assert normalize_gamma(0.0, -10.0, 30.0) == pytest.approx(0.25)
