"""The Denoiser owns the network's conditioning: training (DiffusionLoss),
the samplers and the optimal model hand a network the same normalised gamma
for the same gamma, whatever range the user passes where."""
from __future__ import annotations

import warnings

import pytest
import torch

from ddm_fast.denoiser import (DEFAULT_GAMMA_RANGE, Denoiser,
                               GammaRangeMismatchWarning)
from ddm_fast.loss import DiffusionLoss
from ddm_fast.optimal_model import OptimalModel
from ddm_fast.sampler import DDIMSampler, HeunSampler
from ddm_fast.scheduler import LinearScheduler
from ddm_fast.utils import normalize_gamma


class Recorder(torch.nn.Module):
    """Records (gamma seen through normalized_gamma) per call."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, z, normalized_gamma, mask=None, **conditioning):
        self.seen.append(normalized_gamma.detach().reshape(-1).clone())
        return z * self.weight


def loss_view(net, loss_fn, gamma):
    """normalised gamma the network sees in training at log-SNR ``gamma``."""
    net.seen.clear()
    times = torch.full((2,), 0.5)
    scheduler = loss_fn.scheduler
    with torch.no_grad():
        scheduler_gamma = scheduler(times)
    loss_fn(net, torch.randn(2, 4), seed=1, time=times)
    return scheduler_gamma[0].item(), net.seen[0][0].item()


def sampler_view(net, sampler, gamma):
    net.seen.clear()
    sampler.step(torch.randn(2, 4), torch.full((2,), gamma),
                 torch.full((2,), gamma + 1.))
    return net.seen[0][0].item()


@pytest.mark.parametrize("train_range,sample_range", [
    (None, None), ((-15., 15.), None), (None, (-10., 10.)),
    ((-15., 15.), (-15., 15.))])
def test_training_and_sampling_see_the_same_normalised_gamma(
        train_range, sample_range):
    net = Recorder()
    train_kw = {} if train_range is None else dict(
        gamma_min=train_range[0], gamma_max=train_range[1])
    sample_kw = {} if sample_range is None else dict(
        gamma_min=sample_range[0], gamma_max=sample_range[1])
    # the sampler is built before training, as a Lightning module does
    sampler = HeunSampler(LinearScheduler(), timesteps=4,
                          denoising_network=net, pbar=False, **sample_kw)
    loss_fn = DiffusionLoss(LinearScheduler(), **train_kw)
    gamma, trained = loss_view(net, loss_fn, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GammaRangeMismatchWarning)
        sampled = sampler_view(net, sampler, gamma)
    assert sampled == pytest.approx(trained, abs=1e-6)
    lo, hi = train_range or DEFAULT_GAMMA_RANGE
    assert trained == pytest.approx((gamma - lo) / (hi - lo), abs=1e-6)


def test_an_explicit_mismatch_warns():
    net = Recorder()
    loss_fn = DiffusionLoss(LinearScheduler(), gamma_min=-10., gamma_max=10.)
    loss_view(net, loss_fn, None)
    sampler = DDIMSampler(LinearScheduler(), timesteps=4,
                          denoising_network=net, gamma_min=-15.,
                          gamma_max=15., pbar=False)
    with pytest.warns(GammaRangeMismatchWarning, match=r"\(-10.0, 10.0\)"):
        sampler_view(net, sampler, 0.)


def test_one_denoiser_for_training_and_sampling():
    net = Recorder()
    denoiser = Denoiser(net, param="v", gamma_min=-12., gamma_max=12.)
    loss_fn = DiffusionLoss(LinearScheduler())
    gamma, trained = loss_view(net, _LossWith(loss_fn, denoiser), None)
    sampler = HeunSampler(LinearScheduler(), timesteps=4,
                          denoising_network=denoiser, pbar=False)
    assert sampler.param is denoiser.param
    assert sampler_view(net, sampler, gamma) == pytest.approx(trained,
                                                              abs=1e-6)
    assert trained == pytest.approx((gamma + 12) / 24, abs=1e-6)
    with pytest.raises(ValueError, match="param"):
        HeunSampler(LinearScheduler(), denoising_network=denoiser, param="eps")
    with pytest.raises(ValueError, match="gamma_min"):
        DiffusionLoss(LinearScheduler(), gamma_min=-3., gamma_max=3.)(
            denoiser, torch.randn(2, 4), seed=0)


class _LossWith:
    """A loss called with the Denoiser instead of the plain network."""

    def __init__(self, loss_fn, denoiser):
        self.loss_fn, self.denoiser, self.scheduler = \
            loss_fn, denoiser, loss_fn.scheduler

    def __call__(self, net, *args, **kwargs):
        return self.loss_fn(self.denoiser, *args, **kwargs)


def test_toolbox_assigns_the_scheduler_range_to_the_sampler():
    net = Recorder()
    scheduler = LinearScheduler(gamma_min=-12., gamma_max=8.)
    sampler = HeunSampler(scheduler, timesteps=4, denoising_network=net,
                          pbar=False)
    # ddm_dynamical's Lightning module does exactly this
    sampler.gamma_min = torch.nn.Parameter(torch.tensor(-12.))
    sampler.gamma_max = torch.nn.Parameter(torch.tensor(8.))
    assert "gamma_min" not in dict(sampler.named_parameters())
    assert (sampler.gamma_min, sampler.gamma_max) == (-12., 8.)
    assert sampler_view(net, sampler, 0.) == pytest.approx(0.6)


def test_optimal_model_is_called_with_its_own_range():
    torch.manual_seed(0)
    data = torch.randn(16, 1, 2, 3, dtype=torch.float64)
    model = OptimalModel(data, gamma_min=-15., gamma_max=10.)
    z = torch.randn(3, 1, 2, 3, dtype=torch.float64)
    gamma = torch.tensor([-3., 0., 4.], dtype=torch.float64)
    # a sampler that does not repeat the model's range still denoises right
    sampler = HeunSampler(LinearScheduler(), denoising_network=model,
                          pbar=False)
    torch.testing.assert_close(sampler.estimate_denoised(z, gamma=gamma),
                               model.denoise(z, gamma))


def test_default_range_and_normalize_gamma():
    assert DEFAULT_GAMMA_RANGE == (-10., 10.)
    assert normalize_gamma(5.) == 0.75
    with pytest.raises(ValueError, match="gamma_min"):
        normalize_gamma(torch.zeros(2), 3., 3.)
    with pytest.raises(ValueError, match="together"):
        Denoiser(Recorder(), gamma_min=-5.)
    with pytest.raises(TypeError, match="network"):
        Denoiser(5)


def test_a_wrapper_in_training_conditions_the_bare_network():
    net = Recorder()

    def autocast_wrapper(z, **kwargs):  # as a training loop wraps a model
        return net(z, **kwargs)
    autocast_wrapper.__wrapped__ = net
    loss_fn = DiffusionLoss(LinearScheduler())
    gamma, trained = loss_view(net, _LossWith(loss_fn, Denoiser(
        autocast_wrapper, gamma_min=-14., gamma_max=14.)), None)
    sampler = HeunSampler(LinearScheduler(), timesteps=4,
                          denoising_network=net, pbar=False)
    assert sampler_view(net, sampler, gamma) == pytest.approx(trained,
                                                              abs=1e-6)


def test_a_plain_function_param_samples_like_its_module():
    def data_param(prediction, in_data, alpha, sigma, gamma, **conditioning):
        return prediction  # the network predicts x (ddm_dynamical style)

    def net(z, normalized_gamma, mask=None):
        return torch.tanh(z)

    mask = torch.ones(1, 4)
    mask[:, 0] = 0
    outs = [HeunSampler(LinearScheduler(), timesteps=5, denoising_network=net,
                        param=param, pbar=False, seed=1).sample((3, 4),
                                                                mask=mask)
            for param in (data_param, "data")]
    torch.testing.assert_close(outs[0], outs[1])
    with pytest.raises(TypeError, match="param"):
        DiffusionLoss(LinearScheduler())(Denoiser(net, param=data_param),
                                         torch.randn(2, 4), seed=0)


def test_reading_the_range_records_nothing():
    net = Recorder()
    sampler = HeunSampler(LinearScheduler(), timesteps=4,
                          denoising_network=net, pbar=False)
    assert (sampler.gamma_min, sampler.gamma_max) == DEFAULT_GAMMA_RANGE
    assert not hasattr(net, "ddm_fast_gamma_range")
    # so training with another range afterwards neither warns nor differs
    loss_fn = DiffusionLoss(LinearScheduler(), gamma_min=-15., gamma_max=15.)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GammaRangeMismatchWarning)
        gamma, trained = loss_view(net, loss_fn, None)
        assert sampler_view(net, sampler, gamma) == pytest.approx(trained,
                                                                  abs=1e-6)


def test_top_level_names():
    import ddm_fast
    assert ddm_fast.Denoiser is Denoiser
    assert callable(ddm_fast.ensemble.sample_ensemble)
    assert {"Denoiser", "denoiser", "ensemble"} <= set(dir(ddm_fast))
