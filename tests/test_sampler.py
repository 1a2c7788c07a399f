"""Tests of the module samplers (ddm_fast.sampler).

Oracles: the independent float64 implementation of docs/math.md,
"Sampler steps", and the analytic Gaussian denoiser of
tests/test_sampling.py. The module samplers work in the
variance-preserving form on the grid gamma_k = scheduler(linspace(1, 0, T+1))
with the last step onto sigma_tilde = 0; the exploding-form references run
on sigma_k = exp(-gamma_k / 2) with the last value replaced by 0.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ddm_fast import ops, sampling
from ddm_fast.parameterization import get_param
from ddm_fast.sampler import (DDIMSampler, DDPMSampler, DPMSolverPP2MSampler,
                              EulerSampler, HeunSampler, KDiffusionSampler)
from ddm_fast.sampling import noise_seed
from test_sampling import (MU, SAMPLE_SHAPE, STD, assert_close,
                           exact_denoised_vp, k_model, ref_alpha,
                           ref_dpmpp_2m, ref_euler_heun, ref_sigma,
                           step_noise)

GAMMA_MIN, GAMMA_MAX = -8., 9.
PARAMS = ["eps", "v", "data", "score", "flow", "edm"]


def linear_scheduler(times):
    return GAMMA_MAX - times * (GAMMA_MAX - GAMMA_MIN)


class GaussianNet(torch.nn.Module):
    """Returns the output f of ``param`` whose x_hat is the exact denoiser;
    recovers gamma from ``normalized_gamma``; records its calls."""

    def __init__(self, param="eps", gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX):
        super().__init__()
        self.param = get_param(param)
        self.gamma_min, self.gamma_max = gamma_min, gamma_max
        # a float64 parameter: the prior sample takes its dtype
        self.anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.calls = []

    def forward(self, in_tensor, normalized_gamma, mask=None, **conditioning):
        self.calls.append({"input": in_tensor, "normalized_gamma":
                           normalized_gamma, "mask": mask, **conditioning})
        gamma = normalized_gamma.reshape(-1).double() * (
            self.gamma_max - self.gamma_min) + self.gamma_min
        z = in_tensor.double()
        shape = (-1,) + (1,) * (z.ndim - 1)
        p, q = self.param.denoise_coefficients(gamma)
        f = (exact_denoised_vp(z, gamma) - p.reshape(shape) * z) \
            / q.reshape(shape)
        return f.to(in_tensor.dtype)


def make(cls, timesteps=6, param="eps", **kwargs):
    kwargs.setdefault("pbar", False)
    return cls(scheduler=linear_scheduler, timesteps=timesteps,
               denoising_network=GaussianNet(param), param=param,
               gamma_min=GAMMA_MIN, gamma_max=GAMMA_MAX, **kwargs)


def grid(timesteps):
    times = torch.linspace(1, 0, timesteps + 1, dtype=torch.float64)
    return linear_scheduler(times)


def exploding_grid(timesteps, n_steps):
    """(sigmas with a final 0, gamma at the start) of the last n_steps."""
    gammas = grid(timesteps)[-n_steps - 1:]
    sigmas = torch.exp(-gammas / 2)
    sigmas[-1] = 0.
    return sigmas, gammas[0]


def start_z(batch=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch,) + SAMPLE_SHAPE, generator=gen,
                       dtype=torch.float64)


def ref_ddim(z, gammas, eta, noises):
    """DDIM(eta) of docs/math.md, "DDIM and DDPM", in the VP form; the
    last step returns x_hat."""
    gammas = [float(g) for g in gammas]
    for k in range(len(gammas) - 1):
        g_t, g_s = gammas[k], gammas[k + 1]
        x_hat = exact_denoised_vp(z, torch.tensor(g_t, dtype=torch.float64))
        eps_hat = (z - ref_alpha(g_t) * x_hat) / ref_sigma(g_t)
        if k == len(gammas) - 2:
            z = x_hat
            continue
        a_s, s_s = ref_alpha(g_s), ref_sigma(g_s)
        c = eta * s_s * math.sqrt(1 - math.exp(g_t - g_s))
        z = a_s * x_hat + torch.sqrt(s_s ** 2 - c ** 2) * eps_hat
        if eta > 0:
            z = z + c * noises[k]
    return z


def run_exploding_reference(name, z, timesteps, n_steps, **kwargs):
    sigmas, gamma_0 = exploding_grid(timesteps, n_steps)
    x_e = z / ref_alpha(gamma_0)
    if name == "dpm":
        return ref_dpmpp_2m(x_e, sigmas)
    return ref_euler_heun(x_e, sigmas, heun=name == "heun", **kwargs)


# ------------------------------------------------------------ maths
@pytest.mark.parametrize("n_steps", [6, 4, 1])
@pytest.mark.parametrize("name,cls", [("euler", EulerSampler),
                                      ("heun", HeunSampler),
                                      ("dpm", DPMSolverPP2MSampler)])
def test_ode_samplers_match_spec(name, cls, n_steps):
    z = start_z()
    out = make(cls).reconstruct(z, n_steps)
    assert_close(out, run_exploding_reference(name, z, 6, n_steps))


def test_ddim_eta0_matches_spec_and_equals_euler():
    z = start_z()
    ddim = make(DDIMSampler, eta=0.).reconstruct(z, 5)
    assert_close(ddim, ref_ddim(z, list(grid(6)[-6:]), 0., None))
    euler = make(EulerSampler).reconstruct(z, 5)
    torch.testing.assert_close(ddim, euler, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls,eta", [(DDIMSampler, 0.4), (DDPMSampler, 1.)])
def test_stochastic_ddim_matches_spec_with_documented_noise(cls, eta):
    kwargs = {"eta": eta} if cls is DDIMSampler else {}
    z, seed, member_offset = start_z(), 2024, 7
    out = make(cls, **kwargs).reconstruct(z, 4, seed=seed,
                                          member_offset=member_offset)
    # step i of the call uses stream noise_seed(seed, i + 1)
    noises = [step_noise(z.shape, seed, i, member_offset) for i in range(4)]
    assert_close(out, ref_ddim(z, list(grid(6)[-5:]), eta, noises))


@pytest.mark.parametrize("heun", [False, True])
def test_churn_matches_spec(heun):
    z, seed = start_z(), 31
    churn = dict(S_churn=3., S_tmin=0.05, S_tmax=20., S_noise=1.01)
    cls = HeunSampler if heun else EulerSampler
    out = make(cls, seed=seed, **churn).reconstruct(z)
    noises = [step_noise(z.shape, seed, k) for k in range(6)]
    expected = run_exploding_reference(
        "heun" if heun else "euler", z, 6, 6, churn=3., s_tmin=0.05,
        s_tmax=20., s_noise=1.01, noises=noises)
    assert_close(out, expected)


def test_sample_draws_the_documented_prior():
    sampler = make(DDPMSampler, seed=5)
    out = sampler.sample((2,) + SAMPLE_SHAPE, member_offset=3)
    prior = ops.randn((2,) + SAMPLE_SHAPE, noise_seed(5, 0), 3 * 6,
                      dtype=torch.float64)
    again = sampler.reconstruct(prior, seed=5, member_offset=3)
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    assert out.dtype == torch.float64  # from the network's parameter
    assert not torch.equal(out, sampler.sample((2,) + SAMPLE_SHAPE, seed=6))


def test_seed_none_draws_from_torch_generator():
    sampler = make(DDPMSampler)
    torch.manual_seed(0)
    first = sampler.sample((2,) + SAMPLE_SHAPE)
    second = sampler.sample((2,) + SAMPLE_SHAPE)
    torch.manual_seed(0)
    repeat = sampler.sample((2,) + SAMPLE_SHAPE)
    assert torch.equal(first, repeat) and not torch.equal(first, second)


# --------------------------------------------------- per-sample gamma
def _split_step(sampler, z, gamma_t, gamma_s, **kwargs):
    per_sample = z[0].numel()
    return torch.cat([sampler.step(z[b:b + 1], gamma_t[b:b + 1],
                                   gamma_s[b:b + 1], offset=b * per_sample,
                                   **{k: (v[b:b + 1] if isinstance(
                                       v, torch.Tensor) else v)
                                      for k, v in kwargs.items()})[0]
                      for b in range(z.shape[0])])


@pytest.mark.parametrize("sampler", [
    make(EulerSampler), make(HeunSampler), make(DDIMSampler, eta=0.7),
    make(HeunSampler, S_churn=4., S_tmin=0.5, S_tmax=5.),
    make(DPMSolverPP2MSampler)],
    ids=["euler", "heun", "ddim", "heun_churn", "dpm"])
def test_per_sample_gamma_equals_one_member_at_a_time(sampler):
    z = start_z()
    gamma_t = torch.tensor([-4., 0.5, 3.], dtype=torch.float64)
    gamma_s = torch.tensor([-1., 2.5, math.inf], dtype=torch.float64)
    kwargs = {"seed": 17}
    if isinstance(sampler, HeunSampler):
        kwargs["churn"] = sampler.churn_factor(6)
    if isinstance(sampler, DPMSolverPP2MSampler):
        kwargs["denoised_prev"] = start_z(seed=1)
        kwargs["gamma_prev"] = gamma_t - torch.tensor([1., 0.7, 2.],
                                                      dtype=torch.float64)
    batched = sampler.step(z, gamma_t, gamma_s, **kwargs)[0]
    single = _split_step(sampler, z, gamma_t, gamma_s, **kwargs)
    torch.testing.assert_close(batched, single, rtol=1e-13, atol=1e-13)
    # the member stepping onto sigma = 0 gets x_hat (no churn there: S_tmin)
    x_hat = exact_denoised_vp(z[2:], gamma_t[2:])
    torch.testing.assert_close(batched[2:], x_hat, rtol=1e-12, atol=1e-12)


def test_heun_step_with_per_sample_gamma_matches_spec():
    sampler = make(HeunSampler)
    z = start_z()
    gamma_t = torch.tensor([-4., 0.5, 3.], dtype=torch.float64)
    gamma_s = torch.tensor([-1., 2.5, 6.], dtype=torch.float64)
    out = sampler.step(z, gamma_t, gamma_s)[0]
    for b in range(3):
        sigmas = torch.exp(-torch.stack((gamma_t[b], gamma_s[b])) / 2)
        x_e = ref_euler_heun(z[b:b + 1] / ref_alpha(gamma_t[b]), sigmas, True)
        assert_close(out[b:b + 1], x_e * ref_alpha(gamma_s[b]))


@pytest.mark.parametrize("cls,kwargs", [
    (DDPMSampler, {}), (HeunSampler, {"S_churn": 2.}),
    (KDiffusionSampler, {"k_func": sampling.sample_euler_ancestral})])
def test_ensemble_noise_does_not_depend_on_batching(cls, kwargs):
    sampler = make(cls, seed=3, **kwargs)
    shape = (4,) + SAMPLE_SHAPE
    whole = sampler.sample(shape)
    halves = torch.cat([sampler.sample((2,) + SAMPLE_SHAPE),
                        sampler.sample((2,) + SAMPLE_SHAPE, member_offset=2)])
    torch.testing.assert_close(whole, halves, rtol=0, atol=0)
    assert not torch.equal(whole[:2], whole[2:])


# --------------------------------------------------------------- masks
@pytest.mark.parametrize("mask_kind", ["broadcast", "per_sample"])
@pytest.mark.parametrize("cls,kwargs", [
    (EulerSampler, {}), (HeunSampler, {"S_churn": 2.}),
    (DDIMSampler, {"eta": 0.5}), (DPMSolverPP2MSampler, {})])
def test_masked_positions_are_zero_after_every_step(cls, kwargs, mask_kind):
    gen = torch.Generator().manual_seed(1)
    shape = (1, 1, 3) if mask_kind == "broadcast" else (3, 1, 3)
    mask = torch.rand(shape, generator=gen) > 0.5
    mask[..., 0], mask[..., 1] = False, True
    sampler = make(cls, **kwargs)
    full = mask.expand((3,) + SAMPLE_SHAPE)
    steps = []

    def callback(info):
        steps.append(info["i"])
        assert torch.all(info["z"][~full] == 0)
        assert torch.all(info["denoised"][~full] == 0)

    out = sampler.sample((3,) + SAMPLE_SHAPE, mask=mask.float(),
                         callback=callback)
    assert steps == list(range(6))
    assert torch.all(out[~full] == 0) and torch.all(out[full] != 0)
    calls = sampler.denoising_network.calls
    assert calls and all(c["mask"] is not None for c in calls)
    assert all(torch.all(c["input"][~full] == 0) for c in calls)


def test_mask_is_not_passed_to_the_network_without_one():
    sampler = make(EulerSampler)
    sampler.sample((2,) + SAMPLE_SHAPE)
    assert all(c["mask"] is None for c in sampler.denoising_network.calls)


# ----------------------------------------------------- parameterizations
@pytest.mark.parametrize("cls,kwargs", [
    (DDIMSampler, {"eta": 0.5}), (HeunSampler, {"S_churn": 2.}),
    (DPMSolverPP2MSampler, {})])
def test_every_parameterization_gives_the_same_samples(cls, kwargs):
    results = {param: make(cls, param=param, seed=8, **kwargs).sample(
        (3,) + SAMPLE_SHAPE) for param in PARAMS}
    for param in PARAMS[1:]:
        torch.testing.assert_close(results[param], results["eps"], rtol=1e-8,
                                   atol=1e-8, msg=param)


# ------------------------------------------- k-diffusion adapter
@pytest.mark.parametrize("func,cls,kwargs", [
    (sampling.sample_heun, HeunSampler, {}),
    (sampling.sample_euler, EulerSampler, {"S_churn": 1.5}),
    (sampling.sample_dpmpp_2m, DPMSolverPP2MSampler, {})])
def test_k_diffusion_adapter_matches_module_sampler(func, cls, kwargs):
    fkwargs = {"s_churn": kwargs["S_churn"]} if kwargs else {}
    adapter = make(KDiffusionSampler, k_func=func, seed=4, **fkwargs)
    module = make(cls, seed=4, **kwargs)
    assert_close(adapter.sample((3,) + SAMPLE_SHAPE),
                 module.sample((3,) + SAMPLE_SHAPE))
    z = start_z()
    assert_close(adapter.reconstruct(z, 3), module.reconstruct(z, 3))


def test_k_diffusion_adapter_runs_a_foreign_k_function():
    """A k-diffusion function that knows nothing of ddm_fast (no seed, no
    mask): the adapter's model is called as k-diffusion calls it."""
    seen = []

    def foreign_euler(model, x, sigmas, extra_args=None, disable=None):
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]),
                             **extra_args)
            seen.append(sorted(extra_args))
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return x

    z = start_z()
    adapter = make(KDiffusionSampler, k_func=foreign_euler)
    out = adapter.reconstruct(z, 4, label=torch.ones(3))
    assert seen == [["label"]] * 4
    assert all("label" in c for c in adapter.denoising_network.calls)
    assert_close(out, make(EulerSampler).reconstruct(z, 4), scale=100.)


# ------------------------------------------------------------ statistics
@pytest.mark.slow
@pytest.mark.parametrize("cls,timesteps", [
    (HeunSampler, 30), (DPMSolverPP2MSampler, 40), (EulerSampler, 200),
    (DDPMSampler, 200)])
def test_samplers_reproduce_target_moments(cls, timesteps):
    n_members = 2000
    sampler = cls(scheduler=lambda t: 10. - t * 22., timesteps=timesteps,
                  denoising_network=GaussianNet("v", -12., 10.), param="v",
                  gamma_min=-12., gamma_max=10., pbar=False, seed=0)
    out = sampler.sample((n_members,) + SAMPLE_SHAPE)
    se = STD / math.sqrt(n_members)
    assert torch.all((out.mean(0) - MU).abs() < 4 * se + 0.02 * STD)
    assert torch.all((out.std(0) / STD - 1).abs()
                     < 4 / math.sqrt(2 * n_members) + 0.02)


# ------------------------------------------------------ toolbox protocol
def test_network_and_hooks_follow_the_toolbox_protocol():
    records = []

    def pre_func(in_data, alpha, sigma, gamma, **conditioning):
        records.append(("pre", alpha, sigma, gamma, sorted(conditioning)))
        return in_data

    def post_func(prediction, in_data, alpha, sigma, gamma, **conditioning):
        records.append(("post", alpha, sigma, gamma, sorted(conditioning)))
        return prediction

    sampler = make(DDIMSampler, timesteps=3, pre_func=pre_func,
                   post_func=post_func)
    cond = torch.arange(3.)
    sampler.sample((3,) + SAMPLE_SHAPE, cond=cond)
    assert len(records) == 6
    gammas = grid(3)
    for k, (_, alpha, sigma, gamma, names) in enumerate(records[::2]):
        assert gamma.shape == alpha.shape == sigma.shape == (3, 1, 1)
        torch.testing.assert_close(gamma.reshape(-1), gammas[k].expand(3))
        torch.testing.assert_close(alpha ** 2 + sigma ** 2,
                                   torch.ones_like(alpha))
        assert names == ["cond"]
    for k, call in enumerate(sampler.denoising_network.calls):
        assert call["normalized_gamma"].shape == (3, 1)
        torch.testing.assert_close(
            call["normalized_gamma"].reshape(-1),
            ((gammas[k] - GAMMA_MIN) / (GAMMA_MAX - GAMMA_MIN)).expand(3))
        assert call["cond"] is cond


def test_float32_sampling_matches_float64():
    z = start_z()
    for cls in (HeunSampler, DPMSolverPP2MSampler, DDIMSampler):
        out64 = make(cls).reconstruct(z)
        out32 = make(cls).reconstruct(z.float())
        assert out32.dtype == torch.float32
        assert_close(out32, out64, dtype=torch.float32, scale=10.)


# --------------------------------------------------------------- errors
def test_argument_errors():
    net = GaussianNet()
    with pytest.raises(ValueError, match="timesteps"):
        HeunSampler(linear_scheduler, timesteps=0, denoising_network=net)
    with pytest.raises(ValueError, match="gamma_min"):
        DDIMSampler(linear_scheduler, denoising_network=net, gamma_min=3.,
                    gamma_max=3.)
    with pytest.raises(TypeError, match="denoising_network"):
        EulerSampler(linear_scheduler, denoising_network="net")
    with pytest.raises(TypeError, match="scheduler"):
        EulerSampler(None, denoising_network=net)
    with pytest.raises(TypeError, match="denoising_network"):
        EulerSampler(linear_scheduler).sample((2,) + SAMPLE_SHAPE)
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(linear_scheduler, denoising_network=net, eta=1.5)
    with pytest.warns(UserWarning, match="'s_churn'"):
        HeunSampler(linear_scheduler, denoising_network=net, s_churn=1.)
    with pytest.raises(ValueError, match="S_churn"):
        HeunSampler(linear_scheduler, denoising_network=net, S_churn=-1.)
    with pytest.raises(ValueError, match="seed"):
        DDPMSampler(linear_scheduler, denoising_network=net, seed=-3)
    sampler = make(DDPMSampler)
    with pytest.raises(ValueError, match="mask"):
        sampler.sample((3,) + SAMPLE_SHAPE, mask=torch.ones(2, 1, 3))
    with pytest.raises(ValueError, match="n_steps"):
        sampler.reconstruct(start_z(), 0)
    with pytest.raises(ValueError, match="sample_shape"):
        sampler.sample(())
    with pytest.raises(ValueError, match="gamma_t"):
        sampler.step(start_z(), torch.zeros(2, dtype=torch.float64), 1.)
    with pytest.raises(ValueError, match="denoised_prev"):
        make(DPMSolverPP2MSampler).step(start_z(), 0., 1.,
                                        denoised_prev=start_z())
    bad = EulerSampler(linear_scheduler,
                       denoising_network=lambda x, normalized_gamma: x[:, :1])
    with pytest.raises(ValueError, match="shape"):
        bad.reconstruct(start_z())


# ----------------------------------------------------------- backends
def test_triton_backend_smoke():
    """One DDPM and one Heun run under the Triton backend (interpreter on
    CPU) against the reference backend."""
    script = textwrap.dedent("""
        import sys, torch
        sys.path.insert(0, "tests")
        from ddm_fast import backends
        reason = backends.why_unavailable("triton")
        if reason is not None:
            print("SKIP", reason); sys.exit(0)
        from test_sampler import make, start_z
        from ddm_fast.sampler import DDPMSampler, HeunSampler
        z = start_z().float()
        for cls, kw in ((DDPMSampler, {}), (HeunSampler, {"S_churn": 1.})):
            ref = make(cls, seed=1, **kw).reconstruct(z, 3)
            with backends.use("triton"):
                tri = make(cls, seed=1, **kw).reconstruct(z, 3)
            torch.testing.assert_close(tri, ref, rtol=1e-4, atol=1e-4)
        print("OK")
    """)
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "No module named 'triton'" in result.stderr:
        pytest.skip("triton is not installed")
    assert result.returncode == 0, result.stderr[-3000:]
    if result.stdout.startswith("SKIP"):
        pytest.skip(result.stdout.strip())
    assert "OK" in result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_loops_never_synchronise(monkeypatch):
    """Every loop runs under CUDA's sync debug mode set to "error"."""
    import test_sampling
    monkeypatch.setattr(test_sampling, "MU", MU.cuda())
    monkeypatch.setattr(test_sampling, "STD", STD.cuda())
    shape = (3,) + SAMPLE_SHAPE
    mask = torch.ones((1,) + SAMPLE_SHAPE, device="cuda")
    samplers = [make(EulerSampler, S_churn=1.), make(HeunSampler, S_churn=1.),
                make(DDIMSampler, eta=0.5), make(DPMSolverPP2MSampler),
                make(KDiffusionSampler, k_func=sampling.sample_heun)]
    sigmas = exploding_grid(6, 6)[0].cuda()
    x = start_z().cuda()
    for sampler in samplers:
        sampler.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for sampler in samplers:
            sampler.sample(shape, mask=mask, seed=1)
        for name in ("euler", "heun", "euler_ancestral", "dpmpp_2m"):
            getattr(sampling, f"sample_{name}")(k_model, x, sigmas,
                                                disable=True, mask=mask)
    finally:
        torch.cuda.set_sync_debug_mode("default")
