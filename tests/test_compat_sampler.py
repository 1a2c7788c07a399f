"""The samplers as ddm_dynamical's users call them (hydra-style keyword
dictionaries with extra keys, a masked pre_func/network/post_func chain, the
toolbox's step call and helper names), plus the samplers' robustness
against bad precision and bad arguments (issue 12)."""
from __future__ import annotations

import math

import pytest
import torch

from ddm_fast.sampler import (DDIMSampler, DDPMSampler, DPMSolverPP2MSampler,
                              EulerSampler, HeunSampler, KDiffusionSampler,
                              default_prior_sample)
from ddm_fast.scheduler import LinearScheduler
from ddm_fast import sampling

SHAPE = (3, 2, 5)

# the extra keys of the configs warn (tested below); not in every test
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*ignores the keyword argument 'grad_scale'")


class MaskedNet(torch.nn.Module):
    """A toolbox-style network: mask is a required argument."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))
        self.masks = []

    def forward(self, in_tensor, normalized_gamma, mask, **conditioning):
        self.masks.append(mask)
        return self.scale * in_tensor * mask


def hydra_config(**extra):
    # as the sea-ice configs write it: an extra key the toolbox ignored
    return dict({"timesteps": 4, "gamma_min": -10., "gamma_max": 10.,
                 "pbar": False, "grad_scale": 1.}, **extra)


def test_unknown_keywords_are_accepted_with_one_warning(monkeypatch):
    from ddm_fast.sampler import base
    monkeypatch.setattr(base, "_WARNED_ARGUMENTS", set())
    with pytest.warns(UserWarning, match="'grad_scale'"):
        sampler = HeunSampler(scheduler=LinearScheduler(),
                              denoising_network=MaskedNet(),
                              **hydra_config(heun=True))
    assert sampler.kwargs == {"grad_scale": 1.}
    mask = torch.ones(1, 2, 5)
    assert torch.isfinite(sampler.sample(SHAPE, mask=mask)).all()
    k_sampler = KDiffusionSampler(sampling.sample_heun, LinearScheduler(),
                                  denoising_network=MaskedNet(),
                                  **hydra_config(s_churn=0.5))
    assert k_sampler.kwargs == {"s_churn": 0.5}  # grad_scale is not passed on
    assert torch.isfinite(k_sampler.sample(SHAPE, mask=mask, seed=1)).all()


def test_mask_reaches_pre_func_network_and_post_func():
    seen = []

    def pre_func(in_data, alpha, sigma, gamma, mask, **conditioning):
        seen.append(("pre", mask, conditioning["forcing"]))
        return in_data * mask

    def post_func(prediction, in_data, alpha, sigma, gamma, mask,
                  **conditioning):
        seen.append(("post", mask, conditioning["forcing"]))
        return prediction * mask

    net = MaskedNet()
    mask = (torch.rand(1, 2, 5) > 0.3).float()
    forcing = torch.randn(3, 1, 5)
    sampler = DDIMSampler(LinearScheduler(), denoising_network=net,
                          pre_func=pre_func, post_func=post_func,
                          **hydra_config())
    out = sampler.sample(SHAPE, mask=mask, forcing=forcing)
    assert len(seen) == 8 and all(m is mask and f is forcing
                                  for _, m, f in seen)
    assert len(net.masks) == 4 and all(m is mask for m in net.masks)
    assert torch.all(out[:, mask[0] == 0] == 0)


def test_toolbox_import_path_and_helpers():
    from ddm_fast.sampler.sampler import BaseSampler
    sampler = HeunSampler(LinearScheduler(), denoising_network=MaskedNet(),
                          **hydra_config())
    assert isinstance(sampler, BaseSampler)
    stats = sampler.convert_step(torch.tensor(0.25))
    assert set(stats) == {"step", "gamma", "alpha_sq", "alpha", "sigma"}
    torch.testing.assert_close(stats["alpha"] ** 2, stats["alpha_sq"])
    torch.testing.assert_close(stats["alpha"] ** 2 + stats["sigma"] ** 2,
                               torch.tensor(1.))
    gamma = torch.tensor(2.)
    z = torch.randn(SHAPE)
    x_e = KDiffusionSampler.input_to_exploding(z, gamma)
    torch.testing.assert_close(x_e, z / torch.sigmoid(gamma).sqrt())


def test_toolbox_step_call_with_dict_statistics():
    mask = torch.ones(1, 2, 5)
    sampler = HeunSampler(LinearScheduler(), denoising_network=MaskedNet(),
                          **hydra_config())
    z = torch.randn(SHAPE)
    curr = sampler.convert_step(torch.tensor(0.75))
    nxt = sampler.convert_step(torch.tensor(0.5))
    out = sampler(z, curr, nxt, mask=mask)
    want, _ = sampler.step(z, curr["gamma"].double(), nxt["gamma"].double(),
                           mask)
    torch.testing.assert_close(out, want)
    # onto step 0 the toolbox's Heun returns the denoised state
    last = sampler(z, curr, sampler.convert_step(torch.tensor(0.)),
                   mask=mask)
    denoised = sampler.estimate_denoised(
        in_data=z, alpha=curr["alpha"], sigma=curr["sigma"],
        gamma=curr["gamma"], mask=mask)
    torch.testing.assert_close(last, denoised)


def test_estimate_functions_take_the_toolbox_keywords():
    net = MaskedNet()
    sampler = EulerSampler(LinearScheduler(), denoising_network=net,
                           **hydra_config())
    z = torch.randn(SHAPE)
    mask = torch.ones(1, 2, 5)
    gamma = torch.full((3, 1, 1), 1.5)
    alpha, sigma = torch.sigmoid(gamma).sqrt(), torch.sigmoid(-gamma).sqrt()
    prediction = sampler.estimate_prediction(in_data=z, alpha=alpha,
                                             sigma=sigma, gamma=gamma,
                                             mask=mask)
    torch.testing.assert_close(prediction, 0.5 * z)
    denoised = sampler.estimate_denoised(in_data=z, alpha=alpha, sigma=sigma,
                                         gamma=gamma, mask=mask)
    torch.testing.assert_close(denoised, (z - sigma * prediction) / alpha)
    # gamma from alpha and sigma alone
    torch.testing.assert_close(
        sampler.estimate_denoised(in_data=z, alpha=alpha, sigma=sigma,
                                  mask=mask), denoised)


def test_default_prior_sample_passes_randn_keywords_on():
    generator = torch.Generator().manual_seed(5)
    got = default_prior_sample((2, 3), generator=generator)
    want = torch.randn((2, 3), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, want)
    assert default_prior_sample((2, 3), seed=1, requires_grad=True
                                ).requires_grad


def test_reconstruct_clips_n_steps_like_the_toolbox():
    sampler = DPMSolverPP2MSampler(LinearScheduler(),
                                   denoising_network=MaskedNet(),
                                   **hydra_config())
    z, mask = torch.randn(SHAPE), torch.ones(1, 2, 5)
    torch.testing.assert_close(sampler.reconstruct(z, 10, mask=mask),
                               sampler.reconstruct(z, 4, mask=mask))


# ------------------------------------------------------------ issue 12
class Shrink(torch.nn.Module):
    """eps-prediction of data ~ N(0, 0.25): f = z sigma / (alpha^2 s2 +
    sigma^2) (the exact denoiser)."""

    def forward(self, z, normalized_gamma):
        gamma = normalized_gamma.double() * 20 - 10
        gamma = gamma.reshape((-1,) + (1,) * (z.ndim - 1))
        a2, s2 = torch.sigmoid(gamma), torch.sigmoid(-gamma)
        return (z.double() * s2.sqrt() / (a2 * 0.25 + s2)).to(z.dtype)


@pytest.mark.parametrize("cls", [HeunSampler, EulerSampler, DDIMSampler,
                                 DPMSolverPP2MSampler])
def test_bfloat16_state_keeps_a_float_grid(cls):
    sampler = cls(LinearScheduler(), timesteps=20, denoising_network=Shrink(),
                  pbar=False)
    z = torch.randn(4, 256, dtype=torch.float64)
    want = sampler.reconstruct(z)
    got = sampler.reconstruct(z.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    error = (got.double() - want).norm() / want.norm()
    assert error < 0.02, error


def test_bfloat16_grids_are_not_quantised():
    sampler = HeunSampler(LinearScheduler(), timesteps=20,
                          denoising_network=Shrink(), pbar=False)
    torch.testing.assert_close(sampler.gamma_grid(dtype=torch.bfloat16),
                               sampler.gamma_grid(dtype=torch.float32))
    sigmas = []
    k_sampler = KDiffusionSampler(sampling.sample_euler, LinearScheduler(),
                                  timesteps=20, denoising_network=Shrink(),
                                  pbar=False)
    k_sampler.reconstruct(torch.randn(2, 8, dtype=torch.bfloat16),
                          callback=lambda info: sigmas.append(info["sigma"]))
    # exp(10 / 2) = 148.41; a bfloat16 grid starts at 148.0
    assert float(sigmas[0]) == pytest.approx(math.exp(5.), rel=1e-6)


@pytest.mark.parametrize("cls,kwargs", [(DDIMSampler, {"eta": 0.5}),
                                        (DDPMSampler, {})])
def test_stochastic_step_towards_more_noise_is_finite(cls, kwargs):
    sampler = cls(LinearScheduler(), denoising_network=Shrink(), pbar=False,
                  **kwargs)
    deterministic = DDIMSampler(LinearScheduler(), denoising_network=Shrink(),
                                pbar=False)
    z = torch.randn(2, 6)
    out, _ = sampler.step(z, 1., 0., seed=3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, deterministic.step(z, 1., 0.)[0])


def test_sampling_arguments_are_checked_at_the_boundary():
    sampler = HeunSampler(LinearScheduler(), denoising_network=Shrink(),
                          pbar=False)
    with pytest.raises(ValueError, match="member_offset"):
        sampler.sample((2, 3), member_offset=2 ** 62)
    with pytest.raises(ValueError, match="S_noise"):
        HeunSampler(LinearScheduler(), S_noise=math.nan)
    with pytest.raises(TypeError, match="gamma_min"):
        HeunSampler(LinearScheduler(), gamma_min="a", gamma_max=1.)
    with pytest.raises(ValueError, match="gamma_min"):
        HeunSampler(LinearScheduler(), gamma_min=2., gamma_max=1.)
    with pytest.raises(TypeError, match="denoising_network"):
        HeunSampler(LinearScheduler(), denoising_network=5)
    with pytest.raises(TypeError, match="s_tmin"):
        sampling.sample_heun(lambda x, s: x, torch.zeros(2, 3),
                             torch.tensor([1., 0.]), s_tmin="a")
    with pytest.raises(ValueError, match="denoising_network .*must return"):
        HeunSampler(LinearScheduler(), pbar=False,
                    denoising_network=lambda z, normalized_gamma: z[:, :1]
                    ).sample((2, 3))


class Neighbours(torch.nn.Module):
    """Mixes each point with its neighbour (a convolution near the coast)
    and records its inputs."""

    def __init__(self, coupling: float):
        super().__init__()
        self.coupling, self.inputs = coupling, []

    def forward(self, z, normalized_gamma, mask=None):
        self.inputs.append(z.clone())
        return 0.5 * z + self.coupling * torch.roll(z, 1, dims=-1)


@pytest.mark.parametrize("cls", [HeunSampler, DDPMSampler,
                                 DPMSolverPP2MSampler])
def test_zero_land_false_lets_the_state_evolve_under_the_mask(cls):
    mask = torch.ones(1, 2, 5)
    mask[..., :2] = 0
    land = mask.expand(3, 2, 5) == 0
    results = {}
    for coupling in (0., 0.3):
        for zero_land in (True, False):
            net = Neighbours(coupling)
            sampler = cls(LinearScheduler(), timesteps=4, pbar=False,
                          denoising_network=net, zero_land=zero_land, seed=2)
            out = sampler.sample(SHAPE, mask=mask)
            assert torch.all(out[land] == 0)
            seen_land = torch.stack([x[land] for x in net.inputs])
            assert bool((seen_land != 0).any()) == (not zero_land)
            results[coupling, zero_land] = out
    # a point-wise network cannot tell; one mixing neighbours can
    torch.testing.assert_close(results[0., True], results[0., False])
    assert not torch.allclose(results[0.3, True], results[0.3, False])
