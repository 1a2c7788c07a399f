"""Tests of the k-diffusion-style function samplers (ddm_fast.sampling).

The oracle is an independent float64 implementation of docs/math.md,
"Sampler steps", written here from the formulas (plain torch, no ddm_fast
ops), driven by an analytic Gaussian denoiser: for data x ~ N(mu, diag(s^2))
the exact denoiser in the exploding form is
x_hat = mu + s^2 / (s^2 + sigma^2) (x_e - mu).
The helpers are shared with tests/test_sampler.py.
"""
from __future__ import annotations

import math

import pytest
import torch

from ddm_fast import ops, sampling
from ddm_fast.sampling import noise_seed

# data: x ~ N(MU, diag(STD^2)) per element of a (2, 3) sample
MU = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.5, -0.5]], dtype=torch.float64)
STD = torch.tensor([[0.3, 1.5, 0.8], [1.0, 0.2, 2.0]], dtype=torch.float64)
SAMPLE_SHAPE = (2, 3)

TOL = {torch.float64: 1e-10, torch.float32: 2e-4}


# ------------------------------------------------------ analytic denoiser
def _per_sample(v: torch.Tensor, ndim: int) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=torch.float64)
    if v.ndim == 0:
        return v
    return v.reshape((-1,) + (1,) * (ndim - 1))


def exact_denoised_exploding(x_e: torch.Tensor, sigma) -> torch.Tensor:
    """E[x | x_e] for x_e = x + sigma eps (per-sample sigma), float64."""
    sig = _per_sample(sigma, x_e.ndim).to(x_e.device)
    mu, std = MU.to(x_e), STD.to(x_e)
    shrink = std ** 2 / (std ** 2 + sig.to(x_e.dtype) ** 2)
    return mu + shrink * (x_e - mu)


def ref_alpha(gamma):
    gamma = torch.as_tensor(gamma, dtype=torch.float64)
    return torch.sqrt(torch.sigmoid(gamma))


def ref_sigma(gamma):
    gamma = torch.as_tensor(gamma, dtype=torch.float64)
    return torch.sqrt(torch.sigmoid(-gamma))


def exact_denoised_vp(z: torch.Tensor, gamma) -> torch.Tensor:
    """E[x | z] for z = alpha x + sigma eps at per-sample gamma."""
    g = _per_sample(gamma, z.ndim)
    return exact_denoised_exploding(z / ref_alpha(g).to(z), torch.exp(-g / 2))


def k_model(x, sigma, **extra):
    """The k-diffusion-style model: exploding state, per-sample sigma."""
    assert sigma.shape == (x.shape[0],)
    return exact_denoised_exploding(x, sigma)


def step_noise(shape, seed, step, member_offset=0, dtype=torch.float64):
    """The documented noise of step ``step``: stream noise_seed(seed, step + 1)
    at offset member_offset * numel_per_sample."""
    per_sample = math.prod(shape[1:])
    return ops.randn(shape, noise_seed(seed, step + 1),
                     member_offset * per_sample, dtype=dtype)


# ------------- independent docs/math.md, "Sampler steps" (exploding form)
def _den(x, sigma: float):
    return exact_denoised_exploding(x, torch.tensor(sigma, dtype=torch.float64))


def ref_euler_heun(x, sigmas, heun, churn=0., s_tmin=0., s_tmax=math.inf,
                   s_noise=1., noises=None):
    """Karras et al. (2022) Alg. 2, literally, on 1-D float64 sigmas."""
    n = len(sigmas) - 1
    sigmas = [float(s) for s in sigmas]
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        g = min(churn / n, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.
        s_hat = s * (1 + g)
        if churn > 0:
            x = x + math.sqrt(s_hat ** 2 - s ** 2) * s_noise * noises[i]
        d = (x - _den(x, s_hat)) / s_hat
        x_next = x + (s_next - s_hat) * d
        if heun and s_next != 0:
            d_2 = (x_next - _den(x_next, s_next)) / s_next
            x_next = x + (s_next - s_hat) * (d + d_2) / 2
        x = x_next
    return x


def ref_ancestral(x, sigmas, eta, s_noise, noises):
    sigmas = [float(s) for s in sigmas]
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        up = min(s_next, eta * math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2)
                                         / s ** 2))
        down = math.sqrt(s_next ** 2 - up ** 2)
        d = (x - _den(x, s)) / s
        x = x + d * (down - s) + noises[i] * s_noise * up
    return x


def ref_dpmpp_2m(x, sigmas):
    """DPM-Solver++(2M) of docs/math.md, "DPM-Solver++(2M)", with
    lambda = -log(sigma)."""
    sigmas = [float(s) for s in sigmas]
    lam = [-math.log(s) if s > 0 else math.inf for s in sigmas]
    prev = None
    for i in range(len(sigmas) - 1):
        den = _den(x, sigmas[i])
        h = lam[i + 1] - lam[i]
        if prev is None or sigmas[i + 1] == 0:
            d = den
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * den - 1 / (2 * r) * prev
        x = sigmas[i + 1] / sigmas[i] * x - math.expm1(-h) * d
        prev = den
    return x


def karras(n=8, sigma_min=0.02, sigma_max=40.):
    return sampling.get_sigmas_karras(n, sigma_min, sigma_max).double()


def start_state(batch=3, sigma_max=40., seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn((batch,) + SAMPLE_SHAPE, generator=gen,
                        dtype=torch.float64) * sigma_max).to(dtype)


def assert_close(actual, expected, dtype=torch.float64, scale=1.):
    tol = TOL[dtype] * scale
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol,
                               atol=tol)


# --------------------------------------------------------------- tests
@pytest.mark.parametrize("ends_at_zero", [True, False])
@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m"])
def test_deterministic_samplers_match_spec(name, ends_at_zero):
    sigmas = karras()
    if not ends_at_zero:
        sigmas = sigmas[:-1]
    x = start_state()
    out = getattr(sampling, f"sample_{name}")(k_model, x, sigmas, disable=True)
    if name == "dpmpp_2m":
        expected = ref_dpmpp_2m(x, sigmas)
    else:
        expected = ref_euler_heun(x, sigmas, heun=name == "heun")
    assert_close(out, expected)


@pytest.mark.parametrize("heun", [False, True])
def test_churn_matches_spec_with_documented_noise(heun):
    sigmas = karras(6)
    x = start_state()
    seed, member_offset = 1234, 5
    kwargs = dict(s_churn=2.5, s_tmin=0.1, s_tmax=10., s_noise=1.003)
    func = sampling.sample_heun if heun else sampling.sample_euler
    out = func(k_model, x, sigmas, disable=True, seed=seed,
               member_offset=member_offset, **kwargs)
    noises = [step_noise(x.shape, seed, i, member_offset) for i in range(6)]
    expected = ref_euler_heun(x, sigmas, heun, churn=2.5, s_tmin=0.1,
                              s_tmax=10., s_noise=1.003, noises=noises)
    assert_close(out, expected)
    # the window matters: without it the result differs
    wide = ref_euler_heun(x, sigmas, heun, churn=2.5, s_noise=1.003,
                          noises=noises)
    assert (wide - expected).abs().max() > 1e-3


@pytest.mark.parametrize("eta,s_noise", [(1., 1.), (0.5, 0.9)])
def test_ancestral_matches_spec(eta, s_noise):
    sigmas = karras(7)
    x = start_state()
    out = sampling.sample_euler_ancestral(k_model, x, sigmas, eta=eta,
                                          s_noise=s_noise, disable=True,
                                          seed=99)
    noises = [step_noise(x.shape, 99, i) for i in range(7)]
    assert_close(out, ref_ancestral(x, sigmas, eta, s_noise, noises))


def test_ancestral_eta0_is_euler():
    sigmas, x = karras(), start_state()
    out = sampling.sample_euler_ancestral(k_model, x, sigmas, eta=0.,
                                          disable=True)
    euler = sampling.sample_euler(k_model, x, sigmas, disable=True)
    assert_close(out, euler, scale=0.01)


def test_custom_noise_sampler_is_used_and_skipped_at_zero():
    sigmas, x = karras(5), start_state()
    gen = torch.Generator().manual_seed(7)
    noises = [torch.randn(x.shape, generator=gen, dtype=x.dtype)
              for _ in range(5)]
    calls = []

    def noise_sampler(sigma, sigma_next):
        calls.append((float(sigma), float(sigma_next)))
        return noises[len(calls) - 1]

    out = sampling.sample_euler_ancestral(k_model, x, sigmas, disable=True,
                                          noise_sampler=noise_sampler)
    assert len(calls) == 4  # not on the step onto sigma = 0
    assert calls[0] == (float(sigmas[0]), float(sigmas[1]))
    assert_close(out, ref_ancestral(x, sigmas, 1., 1., noises))


def test_per_sample_sigmas_equal_one_member_at_a_time():
    grids = [karras(6, 0.02, 40.), karras(6, 0.05, 10.), karras(6, 0.01, 80.)]
    sigmas = torch.stack(grids, dim=1)  # (n + 1, B)
    x = start_state()
    for name in ("euler", "heun", "dpmpp_2m"):
        func = getattr(sampling, f"sample_{name}")
        batched = func(k_model, x, sigmas, disable=True)
        single = torch.cat([func(k_model, x[b:b + 1], grids[b], disable=True)
                            for b in range(3)])
        assert_close(batched, single, scale=0.01)
    kwargs = dict(disable=True, seed=5)
    batched = sampling.sample_euler_ancestral(k_model, x, sigmas, **kwargs)
    single = torch.cat([sampling.sample_euler_ancestral(
        k_model, x[b:b + 1], grids[b], member_offset=b, **kwargs)
        for b in range(3)])
    assert_close(batched, single, scale=0.01)


@pytest.mark.parametrize("func,kwargs", [
    (sampling.sample_euler_ancestral, {}),
    (sampling.sample_heun, {"s_churn": 3.}),
    (sampling.sample_euler, {"s_churn": 3.}),
])
def test_noise_does_not_depend_on_batching(func, kwargs):
    sigmas, x = karras(5), start_state(batch=4)
    whole = func(k_model, x, sigmas, disable=True, seed=11, **kwargs)
    halves = torch.cat([
        func(k_model, x[:2], sigmas, disable=True, seed=11, **kwargs),
        func(k_model, x[2:], sigmas, disable=True, seed=11, member_offset=2,
             **kwargs)])
    torch.testing.assert_close(whole, halves, rtol=0, atol=0)
    other_seed = func(k_model, x, sigmas, disable=True, seed=12, **kwargs)
    assert (other_seed - whole).abs().max() > 1e-3


@pytest.mark.parametrize("mask_shape", [(1, 1, 3), (3, 2, 3)])
@pytest.mark.parametrize("name", ["euler", "heun", "euler_ancestral",
                                  "dpmpp_2m"])
def test_mask_zeroes_every_state(name, mask_shape):
    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(mask_shape, generator=gen) > 0.4
    mask[..., 0] = False  # at least one masked position everywhere
    sigmas, x = karras(5), start_state()
    seen = []

    def callback(info):
        seen.append(info["i"])
        if info["i"] > 0:  # the state handed in is the user's, not ours
            assert torch.all(info["x"][~mask.expand_as(x)] == 0)

    kwargs = {"s_churn": 1.} if name in ("euler", "heun") else {}
    out = getattr(sampling, f"sample_{name}")(
        k_model, x, sigmas, callback=callback, disable=True, mask=mask,
        **kwargs)
    assert seen == list(range(5))
    assert torch.all(out[~mask.expand_as(x)] == 0)
    assert (out[mask.expand_as(x)] != 0).all()


def test_callback_and_model_follow_k_diffusion_convention():
    sigmas, x = karras(4).float(), start_state(dtype=torch.float32)
    received, infos = [], []

    def model(x_in, sigma, scale=None):
        received.append((sigma.shape, sigma.dtype, scale))
        return exact_denoised_exploding(x_in, sigma).to(x_in.dtype)

    # positional arguments in k-diffusion's order
    out = sampling.sample_heun(model, x, sigmas, {"scale": 2.}, infos.append,
                               True, 0., 0., float("inf"), 1.)
    assert out.dtype == torch.float32
    assert all(r == (torch.Size([3]), torch.float32, 2.) for r in received)
    assert len(received) == 4 + 3  # a second call on every step but the last
    assert [info["i"] for info in infos] == [0, 1, 2, 3]
    assert set(infos[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    assert float(infos[1]["sigma"]) == float(sigmas[1])
    expected = ref_euler_heun(x.double(), sigmas.double(), heun=True)
    assert_close(out, expected, dtype=torch.float32, scale=float(
        expected.abs().max()))


def test_float32_matches_float64():
    sigmas, x = karras(10), start_state()
    for name in ("euler", "heun", "dpmpp_2m"):
        func = getattr(sampling, f"sample_{name}")

        def model32(x_in, sigma):
            return exact_denoised_exploding(x_in, sigma).float()

        out32 = func(model32, x.float(), sigmas.float(), disable=True)
        out64 = func(k_model, x, sigmas, disable=True)
        assert out32.dtype == torch.float32
        assert_close(out32, out64, dtype=torch.float32, scale=5.)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["heun", "dpmpp_2m"])
def test_ode_samplers_reproduce_target_moments(name):
    n_members = 2000
    sigmas = karras(40, 0.005, 80.)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((n_members,) + SAMPLE_SHAPE, generator=gen,
                    dtype=torch.float64) * 80.
    out = getattr(sampling, f"sample_{name}")(k_model, x, sigmas, disable=True)
    # 4 standard errors of the mean and of the standard deviation
    se = STD / math.sqrt(n_members)
    assert torch.all((out.mean(0) - MU).abs() < 4 * se + 0.01 * STD)
    assert torch.all((out.std(0) / STD - 1).abs() < 4 / math.sqrt(
        2 * n_members) + 0.01)


def test_karras_sigmas_and_ancestral_step():
    sigmas = sampling.get_sigmas_karras(5, 0.1, 10., rho=3.)
    assert sigmas.shape == (6,) and float(sigmas[-1]) == 0.
    ramp = torch.linspace(0, 1, 5, dtype=torch.float64)
    expected = (10 ** (1 / 3) + ramp * (0.1 ** (1 / 3) - 10 ** (1 / 3))) ** 3
    torch.testing.assert_close(sigmas[:-1].double(), expected, rtol=1e-6,
                               atol=0)
    s_from = torch.tensor([3., 2., 1.], dtype=torch.float64)
    s_to = torch.tensor([2., 0.5, 0.], dtype=torch.float64)
    down, up = sampling.get_ancestral_step(s_from, s_to, eta=1.)
    torch.testing.assert_close(down ** 2 + up ** 2, s_to ** 2)
    torch.testing.assert_close(
        up, s_to * torch.sqrt(1 - s_to ** 2 / s_from ** 2))
    down0, up0 = sampling.get_ancestral_step(s_from, s_to, eta=0.)
    assert torch.equal(down0, s_to) and torch.all(up0 == 0)
    x = torch.randn(3, 2)
    torch.testing.assert_close(sampling.to_d(x, s_from.float(), x * 0),
                               x / s_from.float()[:, None])


def test_noise_seed_streams():
    seeds = {noise_seed(5, k) for k in range(50)} | {noise_seed(6, k)
                                                     for k in range(50)}
    assert len(seeds) == 100
    assert all(0 <= s < 2 ** 63 for s in seeds)
    assert noise_seed(5, 3) == noise_seed(5, 3)
    with pytest.raises(ValueError, match="stream"):
        noise_seed(5, -1)
    with pytest.raises(ValueError, match="seed"):
        noise_seed(-5, 1)


def test_argument_errors():
    sigmas, x = karras(3), start_state()
    with pytest.raises(TypeError, match="model"):
        sampling.sample_euler(None, x, sigmas)
    with pytest.raises(ValueError, match="sigmas"):
        sampling.sample_euler(k_model, x, sigmas[:1])
    with pytest.raises(ValueError, match="sigmas"):
        sampling.sample_heun(k_model, x, torch.ones(4, 2, dtype=x.dtype))
    with pytest.raises(TypeError, match="extra_args"):
        sampling.sample_dpmpp_2m(k_model, x, sigmas, extra_args=[1])
    with pytest.raises(ValueError, match="s_churn"):
        sampling.sample_heun(k_model, x, sigmas, s_churn=-1.)
    with pytest.raises(ValueError, match="eta"):
        sampling.sample_euler_ancestral(k_model, x, sigmas, eta=-0.5)
    with pytest.raises(ValueError, match="mask"):
        sampling.sample_euler(k_model, x, sigmas, mask=torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="member_offset"):
        sampling.sample_euler_ancestral(k_model, x, sigmas, member_offset=-1)
    with pytest.raises(ValueError, match="sigma_min"):
        sampling.get_sigmas_karras(4, 2., 1.)
