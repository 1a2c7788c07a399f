"""Noise schedulers (docs/math.md, "Schedulers"): truncation, inverse,
density, gradients, the adaptive binarized update (also across two gloo
processes) and errors.

Closed forms are written out here with NumPy/SciPy, independently of the
library's (stabilised) formulas.
"""
from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from ddm_fast.scheduler import (BinarizedScheduler, CosineScheduler,
                                EDMSamplingScheduler, EDMTrainingScheduler,
                                FlowOTScheduler, LinearScheduler,
                                NoiseScheduler, PredefinedScheduler)

# (atol, rtol) of gamma per dtype (|gamma| up to ~15).
GAMMA_TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-5)}

BINARIZED_VALUES = [0.5, 1.0, 2.0, 3.0, 0.1, 4.0, 1.0, 1.0, 2.5, 0.7]


def make_binarized(**kwargs):
    kwargs.setdefault("n_bins", len(BINARIZED_VALUES))
    kwargs.setdefault("gamma_min", -13.)
    kwargs.setdefault("gamma_max", 9.)
    scheduler = BinarizedScheduler(**kwargs)
    scheduler.set_bin_values(torch.tensor(BINARIZED_VALUES[:scheduler.n_bins]))
    return scheduler


FACTORIES = {
    "linear": lambda learnable=False: LinearScheduler(
        gamma_min=-12., gamma_max=9., learnable=learnable),
    "cosine": lambda learnable=False: CosineScheduler(
        shift=1.5, gamma_min=-12., gamma_max=14., learnable=learnable),
    "edm_training": lambda learnable=False: EDMTrainingScheduler(
        gamma_min=-11., gamma_max=13., learnable=learnable),
    "edm_sampling": lambda learnable=False: EDMSamplingScheduler(
        gamma_min=-10., gamma_max=15., learnable=learnable),
    "flow_ot": lambda learnable=False: FlowOTScheduler(
        gamma_min=-14., gamma_max=12., learnable=learnable),
    "predefined": lambda learnable=False: PredefinedScheduler(
        torch.tensor([14., 6., 2.5, 0., -3., -9., -15.]),
        gamma_min=-12., gamma_max=10.),
    "binarized": lambda learnable=False: make_binarized(learnable=learnable),
}
LEARNABLE = [name for name in FACTORIES if name != "predefined"]


def make(name, dtype=torch.float64, learnable=False):
    scheduler = FACTORIES[name](learnable=learnable).to(dtype)
    if name == "binarized":  # the values exactly, in dtype
        scheduler.set_bin_values(torch.tensor(BINARIZED_VALUES, dtype=dtype))
    return scheduler


def bounds(scheduler):
    return float(scheduler.gamma_min.detach()), \
        float(scheduler.gamma_max.detach())


def bin_edges(scheduler):
    """Kinks of the piecewise schedulers (quadrature breakpoints)."""
    if isinstance(scheduler, BinarizedScheduler):
        return scheduler.bin_limits.tolist()
    if isinstance(scheduler, PredefinedScheduler):
        return scheduler.time_gammas.tolist()
    return []


def interior_gammas(scheduler, n=40, margin=1e-3, seed=0):
    """Random gammas inside the range, away from any kink by > margin."""
    lo, hi = bounds(scheduler)
    gen = np.random.default_rng(seed)
    gamma = gen.uniform(lo + margin, hi - margin, size=4 * n)
    edges = np.asarray(bin_edges(scheduler) or [np.inf])
    far = np.min(np.abs(gamma[:, None] - edges[None, :]), axis=1) > margin
    return torch.tensor(gamma[far][:n], dtype=torch.float64)


# ------------------------------------------------------------ closed forms
def reference_gamma(name, scheduler, time):
    """gamma(t) from the formulas of docs/math.md, "Schedulers", in NumPy
    (float64)."""
    t = np.asarray(time, dtype=np.float64)
    lo, hi = bounds(scheduler)
    if name == "linear":
        return hi - t * (hi - lo)
    if name == "cosine":
        s = scheduler.shift
        big_t = lambda g: 2 / np.pi * np.arctan(np.exp(-g / 2 + s))
        tt = big_t(hi) + t * (big_t(lo) - big_t(hi))
        return -2 * np.log(np.tan(np.pi * tt / 2)) + 2 * s
    if name == "edm_training":
        dist = stats.norm(2.4, 2.4)
        tt = dist.sf(hi) + t * (dist.sf(lo) - dist.sf(hi))
        return dist.isf(tt)
    if name == "edm_sampling":
        # truncated rho-schedule == the rho-schedule between the range's
        # own sigma~ (see EDMSamplingScheduler's docstring)
        rho, s_min, s_max = scheduler.rho, math.exp(-hi / 2), math.exp(-lo / 2)
        sig = (s_max ** (1 / rho) + (1 - t) * (s_min ** (1 / rho) -
                                               s_max ** (1 / rho))) ** rho
        return -2 * np.log(sig)
    if name == "flow_ot":
        big_t = lambda g: 1 / (1 + np.exp(g / 2))
        tt = big_t(hi) + t * (big_t(lo) - big_t(hi))
        return 2 * np.log((1 - tt) / tt)
    if name == "predefined":
        knots = scheduler.time_gammas.double().numpy()
        knot_t = np.linspace(0, 1, len(knots))
        t_of = lambda g: np.interp(g, knots[::-1], knot_t[::-1])
        tt = t_of(hi) + t * (t_of(lo) - t_of(hi))
        return np.interp(tt, knot_t, knots)
    if name == "binarized":
        values = np.asarray(BINARIZED_VALUES)
        edges = np.linspace(-20, 20, len(values) + 1)
        cdf = np.concatenate(([0.], np.cumsum(values * np.diff(edges))))
        c_lo, c_hi = np.interp([lo, hi], edges, cdf)
        return np.interp(c_hi - t * (c_hi - c_lo), cdf, edges)
    raise KeyError(name)


def reference_density(name, scheduler, gamma):
    """p(gamma) from docs/math.md, "Schedulers" (unnormalised form / its
    integral)."""
    g = np.asarray(gamma, dtype=np.float64)
    lo, hi = bounds(scheduler)
    if name == "cosine":
        s = scheduler.shift
        shape = lambda x: 1 / (2 * np.pi * np.cosh(x / 2 - s))
    elif name == "edm_training":
        shape = stats.norm(2.4, 2.4).pdf
    elif name == "flow_ot":
        shape = lambda x: 1 / (8 * np.cosh(x / 4) ** 2)
    elif name == "edm_sampling":
        shape = lambda x: np.exp(-x / (2 * scheduler.rho))
    else:
        shape = lambda x: np.ones_like(x)
    norm = integrate.quad(shape, lo, hi, epsabs=1e-14, epsrel=1e-13)[0]
    return shape(g) / norm


# ---------------------------------------------------------------- general
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", FACTORIES)
def test_endpoints_and_dtype(name, dtype):
    scheduler = make(name, dtype)
    lo, hi = bounds(scheduler)
    gamma = scheduler(torch.tensor([0., 1.], dtype=dtype))
    assert gamma.dtype == dtype
    atol, rtol = GAMMA_TOL[dtype]
    torch.testing.assert_close(gamma, torch.tensor([hi, lo], dtype=dtype),
                               atol=atol, rtol=rtol)


@pytest.mark.parametrize("name", FACTORIES)
def test_matches_spec_formula(name):
    scheduler = make(name)
    time = torch.linspace(0, 1, 2001, dtype=torch.float64)
    expected = torch.from_numpy(reference_gamma(name, scheduler, time.numpy()))
    torch.testing.assert_close(scheduler(time), expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", FACTORIES)
def test_float32_agrees_with_float64(name):
    time = torch.linspace(0, 1, 1001)
    gamma32 = make(name, torch.float32)(time)
    gamma64 = make(name)(time.double())
    torch.testing.assert_close(gamma32.double(), gamma64, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", FACTORIES)
def test_strictly_decreasing(name):
    scheduler = make(name)
    gamma = scheduler(torch.linspace(0, 1, 20001, dtype=torch.float64))
    assert bool((gamma[1:] < gamma[:-1]).all())


@pytest.mark.parametrize("name", FACTORIES)
def test_shape_preserved(name):
    scheduler = make(name)
    time = torch.rand(3, 1, 2, 1, dtype=torch.float64)
    gamma = scheduler(time)
    assert gamma.shape == time.shape
    torch.testing.assert_close(gamma.flatten(), scheduler(time.flatten()))
    assert scheduler.get_density(gamma).shape == time.shape
    assert scheduler.inverse(gamma).shape == time.shape


@pytest.mark.parametrize("name", FACTORIES)
def test_inverse_round_trip(name):
    scheduler = make(name)
    time = torch.cat((torch.tensor([0., 1e-9, 0.5, 1 - 1e-9, 1.],
                                   dtype=torch.float64),
                      torch.rand(200, dtype=torch.float64,
                                 generator=torch.Generator().manual_seed(3))))
    torch.testing.assert_close(scheduler.inverse(scheduler(time)), time,
                               atol=1e-12, rtol=0)
    gamma = interior_gammas(scheduler)
    torch.testing.assert_close(scheduler(scheduler.inverse(gamma)), gamma,
                               atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", FACTORIES)
def test_density_integrates_to_one(name):
    scheduler = make(name)
    lo, hi = bounds(scheduler)
    points = [p for p in bin_edges(scheduler) if lo < p < hi] or None
    density = lambda g: float(scheduler.get_density(
        torch.tensor([g], dtype=torch.float64)))
    total, _ = integrate.quad(density, lo, hi, points=points, limit=200,
                              epsabs=1e-12, epsrel=1e-12)
    assert abs(total - 1) < 1e-9


@pytest.mark.parametrize("name", FACTORIES)
def test_density_is_dt_dgamma(name):
    scheduler = make(name)
    gamma = interior_gammas(scheduler)
    step = 1e-5
    finite_diff = -(scheduler.inverse(gamma + step) -
                    scheduler.inverse(gamma - step)) / (2 * step)
    torch.testing.assert_close(scheduler.get_density(gamma), finite_diff,
                               atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("name", ["cosine", "edm_training", "flow_ot",
                                  "edm_sampling", "linear"])
def test_density_matches_spec_formula(name):
    scheduler = make(name)
    gamma = interior_gammas(scheduler)
    expected = torch.from_numpy(reference_density(name, scheduler,
                                                  gamma.numpy()))
    torch.testing.assert_close(scheduler.get_density(gamma), expected,
                               atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("name", LEARNABLE)
def test_gradients_reach_gamma_range(name):
    scheduler = make(name, learnable=True)
    time = torch.tensor([0.013, 0.29, 0.61, 0.97], dtype=torch.float64)
    gamma = interior_gammas(scheduler, n=4, margin=0.05)

    def objective():
        return (scheduler(time) * torch.arange(1., 5., dtype=torch.float64)
                ).sum() + 10 * scheduler.get_density(gamma).sum()

    objective().backward()
    step = 1e-5
    for param in (scheduler.gamma_min, scheduler.gamma_max):
        assert param.grad is not None
        with torch.no_grad():
            param += step
            upper = objective()
            param -= 2 * step
            lower = objective()
            param += step
        finite_diff = (upper - lower) / (2 * step)
        torch.testing.assert_close(param.grad, finite_diff, atol=1e-8,
                                   rtol=1e-6)
        # (the EDM Gaussian's far tail at gamma_min gives ~1e-6)
        assert abs(float(param.grad)) > 1e-7


@pytest.mark.parametrize("name", FACTORIES)
def test_not_learnable_by_default(name):
    scheduler = make(name)
    assert isinstance(scheduler.gamma_min, torch.nn.Parameter)
    assert isinstance(scheduler.gamma_max, torch.nn.Parameter)
    assert not scheduler.gamma_min.requires_grad
    assert not scheduler(torch.rand(5, dtype=torch.float64)).requires_grad


@pytest.mark.parametrize("name", [n for n in FACTORIES if n != "binarized"])
def test_update_is_noop(name):
    scheduler = make(name)
    time = torch.rand(16, dtype=torch.float64)
    before = {k: v.clone() for k, v in scheduler.state_dict().items()}
    scheduler.update(scheduler(time), torch.rand(16, dtype=torch.float64),
                     process_group=None)
    for key, value in scheduler.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=0, rtol=0)


def test_edm_training_default_is_edm_lognormal():
    """ln sigma~ ~ N(-1.2, 1.2^2), i.e. gamma = -2 ln sigma~ ~ N(2.4, 2.4^2):
    the untruncated (wide-range) schedule's median is 2.4, the quartiles
    2.4 -+ 2.4 * 0.6745."""
    scheduler = EDMTrainingScheduler(gamma_min=-60., gamma_max=60.).double()
    gamma = scheduler(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    quartile = 2.4 * stats.norm.ppf(0.75)
    torch.testing.assert_close(
        gamma, torch.tensor([2.4 + quartile, 2.4, 2.4 - quartile],
                            dtype=torch.float64), atol=1e-10, rtol=1e-10)


def test_edm_sampling_untruncated_is_karras_schedule():
    rho, s_min, s_max = 7., 0.002, 80.
    scheduler = EDMSamplingScheduler(
        rho=rho, sigma_min=s_min, sigma_max=s_max,
        gamma_min=-2 * math.log(s_max), gamma_max=-2 * math.log(s_min)).double()
    time = torch.linspace(0, 1, 11, dtype=torch.float64)
    sigma = (s_max ** (1 / rho) + (1 - time) * (s_min ** (1 / rho) -
                                                s_max ** (1 / rho))) ** rho
    torch.testing.assert_close(scheduler(time), -2 * torch.log(sigma),
                               atol=1e-6, rtol=1e-9)


def test_extreme_range_stays_finite():
    """Stable forms: the tails of cosine, flow and the Gaussian CDF."""
    time = torch.linspace(0, 1, 1001)
    for scheduler in (CosineScheduler(gamma_min=-30., gamma_max=30.),
                      FlowOTScheduler(gamma_min=-30., gamma_max=30.),
                      EDMTrainingScheduler(gamma_min=-25., gamma_max=30.)):
        gamma = scheduler(time)
        assert bool(torch.isfinite(gamma).all())
        assert bool(torch.isfinite(scheduler.get_density(gamma)).all())
        assert bool((gamma[1:] < gamma[:-1]).all()), type(scheduler).__name__
        torch.testing.assert_close(gamma[[0, -1]], torch.tensor([30., float(
            scheduler.gamma_min)]), atol=1e-4, rtol=1e-5)


# ------------------------------------------------------------- predefined
def test_predefined_returns_its_gammas_on_the_step_grid():
    knots = torch.tensor([9., 4., 1.5, -2., -7., -11.], dtype=torch.float64)
    scheduler = PredefinedScheduler(knots).double()
    assert bounds(scheduler) == (-11., 9.)
    grid = torch.linspace(0, 1, len(knots), dtype=torch.float64)
    torch.testing.assert_close(scheduler(grid), knots, atol=0, rtol=0)
    # the sampler's grid runs from t = 1 to t = 0
    torch.testing.assert_close(scheduler(grid.flip(0)), knots.flip(0),
                               atol=0, rtol=0)
    midpoints = (grid[1:] + grid[:-1]) / 2
    torch.testing.assert_close(scheduler(midpoints),
                               (knots[1:] + knots[:-1]) / 2)
    # density of the piecewise-linear map: 1 / ((n - 1) * |segment|)
    torch.testing.assert_close(
        scheduler.get_density((knots[1:] + knots[:-1]) / 2),
        1 / (5 * (knots[:-1] - knots[1:])))


# -------------------------------------------------------------- binarized
def test_binarized_uniform_equals_linear():
    binarized = BinarizedScheduler(gamma_min=-7., gamma_max=11.).double()
    linear = LinearScheduler(gamma_min=-7., gamma_max=11.).double()
    time = torch.linspace(0, 1, 501, dtype=torch.float64)
    torch.testing.assert_close(binarized(time), linear(time))
    gamma = linear(time)
    torch.testing.assert_close(binarized.get_density(gamma),
                               linear.get_density(gamma))


def test_binarized_update_hand_worked():
    """4 bins on [-4, 4] (edges -4, -2, 0, 2, 4), r = 0.5.
    Bin 0 gets gamma -3, -2.5 (targets 2, 4: n = 2, mean 3):
        v0 = 0.5^2 * 1 + (1 - 0.5^2) * 3 = 2.5.
    Bin 2 gets gamma 0 (a left edge belongs to its bin) with target 10:
        v2 = 0.5 * 1 + 0.5 * 10 = 5.5.   Bins 1 and 3 keep 1.
    Integral at the edges, in units of bins as the toolbox keeps it
    (cumulative values): 0, 2.5, 3.5, 9, 10 (times the width 2 over gamma).
    Range [-3, 3]: C(-3) = 2.5, C(3) = 19 over gamma, so p = v / 16.5 and
    t = 0.5 -> C = 10.75 -> gamma = 0 + 2 * (10.75 - 7) / 11 = 15/22.
    """
    scheduler = BinarizedScheduler(n_bins=4, gamma_min=-3., gamma_max=3.,
                                   ema_rate=0.5, gamma_limits=(-4., 4.)
                                   ).double()
    gamma = torch.tensor([-3., 0., -2.5], dtype=torch.float64)
    target = torch.tensor([2., 10., 4.], dtype=torch.float64)
    scheduler.update(gamma, target)
    torch.testing.assert_close(
        scheduler.bin_values,
        torch.tensor([2.5, 1., 5.5, 1.], dtype=torch.float64))
    torch.testing.assert_close(
        scheduler.bin_integral,
        torch.tensor([0., 2.5, 3.5, 9., 10.], dtype=torch.float64))
    torch.testing.assert_close(
        scheduler.get_density(torch.tensor([-2.5, -1., 1., 2.5],
                                           dtype=torch.float64)),
        torch.tensor([2.5, 1., 5.5, 1.], dtype=torch.float64) / 16.5)
    torch.testing.assert_close(
        scheduler(torch.tensor([0., 0.5, 1.], dtype=torch.float64)),
        torch.tensor([3., 15 / 22, -3.], dtype=torch.float64))


def test_binarized_update_converges_geometrically():
    """Constant target c_k per bin: after m updates with n samples per bin,
    v_k = c_k + (1 - c_k) r^{n m}; samples outside the limits count in the
    edge bins."""
    scheduler = BinarizedScheduler(n_bins=5, gamma_min=-9., gamma_max=9.,
                                   ema_rate=0.9, gamma_limits=(-10., 10.)
                                   ).double()
    centres = torch.linspace(-8., 8., 5, dtype=torch.float64)
    gamma = torch.cat((centres, centres + 0.5, torch.tensor(
        [-25., 25.], dtype=torch.float64)))
    level = torch.tensor([0.2, 3., 1.5, 0.05, 7.], dtype=torch.float64)
    target = torch.cat((level, level, level[[0, -1]]))
    counts = torch.tensor([3., 2., 2., 2., 3.], dtype=torch.float64)
    for _ in range(7):
        scheduler.update(gamma, target)
    torch.testing.assert_close(scheduler.bin_values,
                               level + (1 - level) * 0.9 ** (counts * 7))


def test_binarized_update_batch_split_invariance():
    """Counts and sums of two halves, summed (what the all-reduce does),
    update the bins exactly as the whole batch does."""
    gen = torch.Generator().manual_seed(5)
    gamma = torch.rand(64, generator=gen, dtype=torch.float64) * 24 - 12
    target = torch.rand(64, generator=gen, dtype=torch.float64) * 3
    whole = make_binarized(ema_rate=0.8).double()
    whole.update(gamma, target)
    split = make_binarized(ema_rate=0.8).double()
    counts_a, sums_a, _ = split._bin_statistics(gamma[:23], target[:23])
    counts_b, sums_b, _ = split._bin_statistics(gamma[23:], target[23:])
    split._apply_bin_statistics(counts_a + counts_b, sums_a + sums_b)
    torch.testing.assert_close(split.bin_values, whole.bin_values)
    torch.testing.assert_close(split.bin_integral, whole.bin_integral)
    # ... and differs from two sequential local updates (not the same rule)
    sequential = make_binarized(ema_rate=0.8).double()
    sequential.update(gamma[:23], target[:23])
    sequential.update(gamma[23:], target[23:])
    assert not torch.allclose(sequential.bin_values, whole.bin_values)


def _gloo_worker(rank, world_size, init_file, gamma, target, result_dir):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}",
                            rank=rank, world_size=world_size)
    try:
        scheduler = make_binarized(ema_rate=0.8).double()
        half = gamma.shape[0] // 2
        piece = slice(0, half) if rank == 0 else slice(half, None)
        scheduler.update(gamma[piece], target[piece])
        torch.save(scheduler.state_dict(),
                   os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(),
                    reason="torch.distributed not built")
def test_binarized_update_all_reduces_over_two_gloo_ranks():
    gen = torch.Generator().manual_seed(9)
    gamma = torch.rand(40, generator=gen, dtype=torch.float64) * 24 - 12
    target = torch.rand(40, generator=gen, dtype=torch.float64) * 3
    expected = make_binarized(ema_rate=0.8).double()
    expected.update(gamma, target)
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.spawn(
            _gloo_worker, nprocs=2, join=True,
            args=(2, os.path.join(tmp, "init"), gamma, target, tmp))
        states = [torch.load(os.path.join(tmp, f"rank{r}.pt"))
                  for r in range(2)]
    for state in states:
        torch.testing.assert_close(state["bin_values"], expected.bin_values)
        torch.testing.assert_close(state["bin_integral"],
                                   expected.bin_integral)


def test_binarized_state_dict_round_trip():
    gen = torch.Generator().manual_seed(2)
    trained = BinarizedScheduler(n_bins=12, ema_rate=0.7)
    for _ in range(3):
        gamma = trained(torch.rand(32, generator=gen))
        trained.update(gamma, torch.rand(32, generator=gen) * 4)
    state = trained.state_dict()
    assert {"bin_values", "bin_integral", "gamma_min",
            "gamma_max"} <= set(state)
    fresh = BinarizedScheduler(n_bins=12, ema_rate=0.7)
    time = torch.linspace(0, 1, 101)
    assert not torch.allclose(fresh(time), trained(time))
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(time), trained(time), atol=0, rtol=0)
    torch.testing.assert_close(fresh.get_density(trained(time)),
                               trained.get_density(trained(time)))


def test_binarized_learns_density_shape():
    """Fed the cosine density as statistic, the schedule approaches the
    cosine schedule (ddm_dynamical's own sanity check, smaller)."""
    target_scheduler = CosineScheduler(gamma_min=-10., gamma_max=10.)
    scheduler = BinarizedScheduler(n_bins=40, ema_rate=0.9)
    gen = torch.Generator().manual_seed(0)
    time = torch.linspace(0, 1, 201)
    error_before = (scheduler(time) - target_scheduler(time)).abs().max()
    for _ in range(150):
        gamma = scheduler(torch.rand(256, generator=gen))
        scheduler.update(gamma, target_scheduler.get_density(gamma))
    error_after = (scheduler(time) - target_scheduler(time)).abs().max()
    assert error_before > 1.0
    assert error_after < 0.2


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize("name", FACTORIES)
def test_timesteps_must_be_float_tensor(name):
    scheduler = make(name)
    with pytest.raises(TypeError, match="timesteps"):
        scheduler(torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="timesteps"):
        scheduler([0.5])
    with pytest.raises(TypeError, match="gamma"):
        scheduler.get_density(torch.tensor([1]))
    with pytest.raises(TypeError, match="gamma"):
        scheduler.inverse(np.array([1.]))
    with pytest.raises(ValueError, match="target"):
        scheduler.update(torch.zeros(4, dtype=torch.float64),
                         torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("cls", [LinearScheduler, CosineScheduler,
                                 EDMTrainingScheduler, EDMSamplingScheduler,
                                 FlowOTScheduler, BinarizedScheduler])
def test_gamma_range_validated(cls):
    with pytest.raises(ValueError, match="gamma_min.*gamma_max"):
        cls(gamma_min=5., gamma_max=-5.)
    with pytest.raises(ValueError, match="gamma_min"):
        cls(gamma_min=float("nan"))
    with pytest.raises(TypeError, match="learnable"):
        cls(learnable="yes")


def test_binarized_arguments_validated():
    with pytest.raises(ValueError, match="n_bins"):
        BinarizedScheduler(n_bins=0)
    with pytest.raises(TypeError, match="n_bins"):
        BinarizedScheduler(n_bins=10.)
    for rate in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="ema_rate"):
            BinarizedScheduler(ema_rate=rate)
    with pytest.raises(ValueError, match="gamma_limits"):
        BinarizedScheduler(gamma_min=-10., gamma_max=10.,
                           gamma_limits=(-5., 20.))
    with pytest.raises(ValueError, match="gamma_limits"):
        BinarizedScheduler(gamma_limits=(20., -20.))
    with pytest.raises(TypeError, match="gamma_limits"):
        BinarizedScheduler(gamma_limits=(-20.,))
    scheduler = BinarizedScheduler(n_bins=4)
    with pytest.raises(ValueError, match="target"):
        scheduler.update(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(TypeError, match="target"):
        scheduler.update(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="values"):
        scheduler.set_bin_values(torch.ones(5))


def test_other_arguments_validated():
    with pytest.raises(ValueError, match="gamma_std"):
        EDMTrainingScheduler(gamma_std=0.)
    with pytest.raises(ValueError, match="sigma_min"):
        EDMSamplingScheduler(sigma_min=90.)
    with pytest.raises(ValueError, match="rho"):
        EDMSamplingScheduler(rho=-1.)
    with pytest.raises(TypeError, match="shift"):
        CosineScheduler(shift="1")
    with pytest.raises(ValueError, match="strictly decreasing"):
        PredefinedScheduler(torch.tensor([-5., 0., 5.]))
    with pytest.raises(ValueError, match="time_gammas"):
        PredefinedScheduler(torch.tensor([[5., 0.]]))
    with pytest.raises(TypeError, match="time_gammas"):
        PredefinedScheduler(torch.tensor([5, 0]))
    with pytest.raises(ValueError, match="within the range of time_gammas"):
        PredefinedScheduler(torch.tensor([5., 0.]), gamma_max=6.)
    with pytest.raises(NotImplementedError):
        NoiseScheduler()(torch.rand(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", FACTORIES)
def test_no_host_sync_on_cuda(name):
    """forward, density, inverse and update never wait for the device."""
    scheduler = make(name, torch.float32).cuda()
    time = torch.rand(64, device="cuda")
    target = torch.rand(64, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gamma = scheduler(time)
        scheduler.get_density(gamma)
        scheduler.inverse(gamma)
        scheduler.update(gamma, target)
        scheduler(time)
    finally:
        torch.cuda.set_sync_debug_mode(0)


# ------------------------------------------ issues 12 and 13: bad values
def test_binarized_density_at_both_closed_ends_and_every_edge():
    """gamma_max = 10 lies on a bin edge of the default bins over (-20, 20):
    the density there is the last bin inside the range, not the bin above
    it. At gamma_min and at every interior edge it is the bin to the right,
    and everywhere the truncated density is renormalised over the range."""
    values = torch.rand(100, generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64) + 0.05
    scheduler = BinarizedScheduler().double()          # bins of width 0.4
    scheduler.set_bin_values(values)
    edges = scheduler.bin_limits
    assert torch.equal(edges, torch.linspace(-20, 20, 101,
                                             dtype=torch.float64))
    inside = (edges >= -10) & (edges <= 10)
    # renormalised over [-10, 10] = bins 25 .. 74 (edges 25 .. 75)
    normaliser = float((values[25:75] * 0.4).sum())
    density = scheduler.get_density(edges[inside])
    expected = torch.cat((values[25:75], values[74:75])) / normaliser
    torch.testing.assert_close(density, expected, rtol=1e-12, atol=0)
    # both closed ends explicitly
    assert float(scheduler.get_density(torch.tensor(10., dtype=torch.float64))) \
        == pytest.approx(float(values[74]) / normaliser, rel=1e-12)
    assert float(scheduler.get_density(torch.tensor(-10., dtype=torch.float64))) \
        == pytest.approx(float(values[25]) / normaliser, rel=1e-12)
    # and the ends reached through the schedule itself
    ends = scheduler.get_density(scheduler(torch.tensor([0., 1.],
                                                        dtype=torch.float64)))
    torch.testing.assert_close(
        ends, torch.stack((values[74], values[25])) / normaliser)


def test_binarized_update_skips_non_finite_statistics_and_counts_them():
    scheduler = BinarizedScheduler(n_bins=8, ema_rate=0.5).double()
    gamma = torch.tensor([-5., float("nan"), 1., 2., 3.], dtype=torch.float64)
    target = torch.tensor([2., 1., float("nan"), float("inf"), 4.],
                          dtype=torch.float64)
    reference = BinarizedScheduler(n_bins=8, ema_rate=0.5).double()
    reference.update(gamma[[0, 4]], target[[0, 4]])
    skipped = scheduler.update(gamma, target)
    assert skipped.dtype == torch.int64 and int(skipped) == 3
    assert torch.equal(scheduler.bin_values, reference.bin_values)
    assert torch.isfinite(scheduler(torch.rand(16, dtype=torch.float64))).all()
    assert int(scheduler.update(gamma[[0]], target[[0]])) == 0


@pytest.mark.parametrize("name", FACTORIES)
def test_times_outside_unit_interval_rejected(name):
    scheduler = make(name)
    for bad in (1.5, -0.25, float("nan")):
        with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 1\]"):
            scheduler(torch.tensor([0.5, bad], dtype=torch.float64))
    with pytest.raises(ValueError, match="timesteps"):
        scheduler.truncate_time(torch.tensor([2.], dtype=torch.float64))
    assert scheduler(torch.tensor([0., 1.], dtype=torch.float64)).isfinite().all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", FACTORIES)
def test_half_precision_times_computed_in_float32(name, dtype):
    scheduler = make(name, torch.float32)
    time = torch.linspace(0, 1, 9)
    gamma = scheduler(time.to(dtype))
    assert gamma.dtype == dtype
    torch.testing.assert_close(gamma, scheduler(time).to(dtype))
    density = scheduler.get_density(gamma)
    assert density.dtype == dtype and torch.isfinite(density).all()


def test_constructor_arguments_named_in_errors():
    with pytest.raises(TypeError, match="gamma_min"):
        BinarizedScheduler(gamma_min="a")
    with pytest.raises(TypeError, match="gamma_max"):
        CosineScheduler(gamma_max="a")
    with pytest.raises(TypeError, match="gamma_mean"):
        EDMTrainingScheduler(gamma_mean=None)
    with pytest.raises(ValueError, match="ema_rate"):
        BinarizedScheduler(ema_rate=float("nan"))
    with pytest.raises(TypeError, match="rho"):
        EDMSamplingScheduler(rho="7")


def test_toolbox_method_names_agree_with_the_truncation():
    """inverse_scheduler is the untruncated T, and t -> truncate_time(t)
    -> T^{-1} is forward: gamma_max at t = 0, gamma_min at t = 1."""
    for name in FACTORIES:
        scheduler = make(name)
        time = torch.linspace(0, 1, 7, dtype=torch.float64)
        truncated = scheduler.truncate_time(time)
        torch.testing.assert_close(truncated[0], scheduler.get_time_shift())
        torch.testing.assert_close(truncated[-1] - truncated[0],
                                   scheduler.get_time_scale())
        torch.testing.assert_close(
            scheduler.inverse_scheduler(scheduler(time)), truncated,
            rtol=1e-9, atol=1e-9)
