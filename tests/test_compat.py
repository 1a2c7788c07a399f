"""Drop-in compatibility with the ddm_dynamical toolbox, outside the samplers.

Exercised the way the toolbox's users call it: modules built from
hydra-style keyword dictionaries (extra keys included), state_dicts laid out
as the toolbox saved them loaded with ``strict=True``, and the toolbox's
public helper methods. The toolbox is not installed: its buffer names and
formulas are written out here from its source, as references.
"""
from __future__ import annotations

import importlib
import warnings

import pytest
import torch

import ddm_fast
from ddm_fast import _compat
from ddm_fast.decoder import CombinedDecoder, GaussianDecoder, LaplaceDecoder
from ddm_fast.encoder import CombinedEncoder, GaussianEncoder, NeuralEncoder
from ddm_fast.layers import RandomFourierLayer, SinusoidalEmbedding
from ddm_fast.parameterization import (EPSParam, FunctionParam, VParam,
                                       get_param)
from ddm_fast.scheduler import (BinarizedScheduler, CosineScheduler,
                                EDMSamplingScheduler, EDMTrainingScheduler,
                                FlowOTScheduler, LinearScheduler)


# ---------------------------------------------------------------- helpers
def instantiate(config):
    """A minimal hydra ``instantiate``: ``_target_`` names a ddm_dynamical
    class, resolved in ddm_fast after the one-line import swap."""
    config = dict(config)
    module_name, _, class_name = config.pop("_target_").rpartition(".")
    module_name = module_name.replace("ddm_dynamical", "ddm_fast", 1)
    return getattr(importlib.import_module(module_name), class_name)(**config)


@pytest.fixture(autouse=True)
def fresh_warning_registry(monkeypatch):
    """Each test sees the 'ignored keyword' warnings afresh."""
    monkeypatch.setattr(_compat, "_WARNED", set())


# The sea-ice configurations (diffusion-nextsim-regional/configs), as hydra
# hands them to the constructors, each with one key the module does not use.
CONFIGS = {
    "binarized": {"_target_": "ddm_dynamical.scheduler.BinarizedScheduler",
                  "n_bins": 100, "gamma_min": -10, "gamma_max": 10,
                  "ema_rate": 0.999, "unused_key": 1},
    "edm_sampling": {
        "_target_": "ddm_dynamical.scheduler.EDMSamplingScheduler",
        "rho": 7, "sigma_min": 0.002, "sigma_max": 80, "gamma_min": -10,
        "gamma_max": 10, "unused_key": 1},
    "cosine": {"_target_": "ddm_dynamical.scheduler.CosineScheduler",
               "shift": 0., "unused_key": 1},
    "linear": {"_target_": "ddm_dynamical.scheduler.LinearScheduler",
               "gamma_min": -10, "gamma_max": 10, "unused_key": 1},
    "flow": {"_target_": "ddm_dynamical.scheduler.FlowOTScheduler",
             "unused_key": 1},
    "edm_training": {
        "_target_": "ddm_dynamical.scheduler.EDMTrainingScheduler",
        "gamma_mean": 2.4, "gamma_std": 2.4, "unused_key": 1},
    "v": {"_target_": "ddm_dynamical.parameterization.VParam",
          "unused_key": 1},
    "edm_param": {"_target_": "ddm_dynamical.parameterization.EDMParam",
                  "sigma_data": 0.5, "unused_key": 1},
    "encoder": {"_target_": "ddm_dynamical.encoder.GaussianEncoder",
                "mean": 1.5, "std": 0.5, "unused_key": 1},
    "decoder": {"_target_": "ddm_dynamical.decoder.GaussianDecoder",
                "mean": 0., "std": 0.1, "stochastic": False,
                "unused_key": 1},
    "laplace": {"_target_": "ddm_dynamical.decoder.LaplaceDecoder",
                "unused_key": 1},
    "embedding": {"_target_": "ddm_dynamical.layers.SinusoidalEmbedding",
                  "dim": 16, "unused_key": 1},
    "fourier": {"_target_": "ddm_dynamical.layers.RandomFourierLayer",
                "in_features": 2, "n_neurons": 8, "unused_key": 1},
    "callback": {"_target_": "ddm_dynamical.callbacks.EvaluateSchedulerCallback",
                 "n_steps": 1001, "unused_key": 1},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_built_from_config_with_extra_key_warns_once_naming_it(name):
    with pytest.warns(UserWarning, match="unused_key") as record:
        module = instantiate(CONFIGS[name])
    assert sum("unused_key" in str(w.message) for w in record) == 1
    assert isinstance(module, (torch.nn.Module,
                               ddm_fast.callbacks.Callback))
    # The same configuration again: no second warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        instantiate(CONFIGS[name])


def test_combined_and_neural_modules_take_extra_keys():
    with pytest.warns(UserWarning, match="unused_key"):
        CombinedEncoder({"a": GaussianEncoder()}, unused_key=1)
    with pytest.warns(UserWarning, match="unused_key"):
        NeuralEncoder(torch.nn.Identity(), unused_key=1)


def test_config_without_extra_keys_is_silent():
    config = {k: v for k, v in CONFIGS["binarized"].items()
              if k != "unused_key"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler = instantiate(config)
    # hydra hands integers: the parameters are still float
    assert scheduler.gamma_min.dtype == torch.get_default_dtype()


# ------------------------------------------- toolbox formulas (references)
def toolbox_binarized_state(values: torch.Tensor, gamma_min=-10,
                            gamma_max=10, limits=(-20., 20.)):
    """The state_dict ddm_dynamical's BinarizedScheduler saves: parameters
    gamma_min/gamma_max (int64 when the config gave integers, as hydra
    does), buffers bin_limits, dx, bin_values, bin_integral (in bins)."""
    n_bins = values.numel()
    bin_limits = torch.linspace(limits[0], limits[1], n_bins + 1)
    return {
        "gamma_min": torch.tensor(gamma_min),
        "gamma_max": torch.tensor(gamma_max),
        "bin_limits": bin_limits,
        "dx": bin_limits[1] - bin_limits[0],
        "bin_values": values.float(),
        "bin_integral": torch.cat((torch.zeros(1),
                                   torch.cumsum(values.float(), 0))),
    }


def toolbox_binarized_forward(state, time):
    """ddm_dynamical's BinarizedScheduler.forward, from its state (float64)."""
    state = {k: v.double() for k, v in state.items()}
    n_bins = state["bin_values"].numel()

    def search(value, knots):
        return (torch.searchsorted(knots, value, right=True) - 1).clamp(
            0, n_bins - 1)

    def integral(gamma):
        index = search(gamma, state["bin_limits"])
        return state["bin_integral"][index] + (
            gamma - state["bin_limits"][index]) * \
            state["bin_values"][index] / state["dx"]

    shift = integral(state["gamma_min"])
    scale = integral(state["gamma_max"]) - shift
    tilde = (1 - time.double()) * scale + shift
    index = search(tilde, state["bin_integral"])
    return state["bin_limits"][index] + state["dx"] / \
        state["bin_values"][index] * (tilde - state["bin_integral"][index])


def toolbox_edm_training_forward(gamma_mean, gamma_std, gamma_min,
                                 gamma_max, time):
    """ddm_dynamical's EDMTrainingScheduler.forward (float64)."""
    normal = torch.distributions.Normal(torch.tensor(gamma_mean).double(),
                                        torch.tensor(gamma_std).double())
    t0 = normal.cdf(-torch.tensor(float(gamma_max)).double())
    t1 = normal.cdf(-torch.tensor(float(gamma_min)).double())
    return -normal.icdf(t0 + (t1 - t0) * time.double())


# --------------------------------------------------------- state dicts
def test_toolbox_binarized_state_loads_strictly_and_gives_its_schedule():
    gen = torch.Generator().manual_seed(3)
    values = torch.rand(100, generator=gen) * 3 + 0.1
    state = toolbox_binarized_state(values)
    scheduler = BinarizedScheduler(n_bins=100, gamma_min=-10, gamma_max=10)
    scheduler.load_state_dict(state, strict=True)
    time = torch.linspace(0, 1, 257, dtype=torch.float64)
    # the toolbox's float32 edges and dx against our exact ones: float32
    # agreement
    torch.testing.assert_close(scheduler.double()(time),
                               toolbox_binarized_forward(state, time),
                               rtol=1e-5, atol=2e-5)
    # the toolbox's density integrates to the bin width dx; ours to 1
    gamma = scheduler(time)
    low, scale = scheduler.normalization
    index = scheduler.bin_search(gamma, scheduler.bin_limits.double())
    toolbox_density = state["bin_values"].double()[index] / scale
    torch.testing.assert_close(
        scheduler.get_density(gamma[1:-1]),
        toolbox_density[1:-1] / float(state["dx"]), rtol=1e-6, atol=0)


def test_toolbox_binarized_state_with_other_limits_adopts_its_edges():
    values = torch.linspace(1, 2, 10)
    state = toolbox_binarized_state(values, gamma_min=-5, gamma_max=5,
                                    limits=(-6., 6.))
    scheduler = BinarizedScheduler(n_bins=10, gamma_min=-5., gamma_max=5.)
    scheduler.load_state_dict(state, strict=True)
    assert scheduler.gamma_limits == (-6., 6.)
    time = torch.linspace(0, 1, 33)
    torch.testing.assert_close(scheduler(time).double(),
                               toolbox_binarized_forward(state, time),
                               rtol=1e-5, atol=1e-5)


def test_binarized_checkpoint_loads_back_bitwise():
    gen = torch.Generator().manual_seed(4)
    trained = BinarizedScheduler(n_bins=40, ema_rate=0.6)
    for _ in range(4):
        gamma = trained(torch.rand(64, generator=gen))
        trained.update(gamma, torch.rand(64, generator=gen) * 3)
    state = trained.state_dict()
    assert set(state) == {"gamma_min", "gamma_max", "bin_limits", "dx",
                          "bin_values", "bin_integral"}
    restored = BinarizedScheduler(n_bins=40, ema_rate=0.6)
    restored.load_state_dict(state, strict=True)
    for key, value in restored.state_dict().items():
        assert torch.equal(value, state[key]), key
    time = torch.rand(100, generator=gen)
    assert torch.equal(restored(time), trained(time))


def test_toolbox_edm_training_state_gives_the_toolbox_distribution():
    state = {"gamma_min": torch.tensor(-10), "gamma_max": torch.tensor(10),
             "gamma_mean": torch.tensor(-3.82), "gamma_std": torch.tensor(2.)}
    scheduler = EDMTrainingScheduler(gamma_mean=-3.82, gamma_std=2.).double()
    scheduler.load_state_dict(state, strict=True)
    time = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    expected = toolbox_edm_training_forward(-3.82, 2., -10, 10, time)
    # float32 buffers of the state: mean and std rounded to float32
    torch.testing.assert_close(scheduler(time), expected, rtol=1e-6,
                               atol=1e-5)
    assert scheduler.state_dict().keys() == {"gamma_min", "gamma_max"}


@pytest.mark.parametrize("make", [
    lambda: CosineScheduler(), lambda: EDMSamplingScheduler(),
    lambda: LinearScheduler(), lambda: FlowOTScheduler()],
    ids=["cosine", "edm_sampling", "linear", "flow"])
def test_toolbox_scheduler_state_loads_strictly(make):
    scheduler = make()
    scheduler.load_state_dict({"gamma_min": torch.tensor(-8),
                               "gamma_max": torch.tensor(6)}, strict=True)
    assert scheduler(torch.tensor([0., 1.])).tolist() == \
        pytest.approx([6., -8.], rel=1e-6)


def test_toolbox_encoder_and_decoder_states_load_strictly():
    # The toolbox's GaussianEncoder saved nothing, its decoders `scale`
    # (torch.ones(1) * std, so (K, 1, 1) for a per-channel std).
    encoder = GaussianEncoder(mean=torch.tensor([1., 2.]),
                              std=torch.tensor([3., 4.]))
    encoder.load_state_dict({}, strict=True)
    decoder = GaussianDecoder(mean=torch.zeros(3, 1, 1),
                              std=torch.tensor([1., 2., 3.])[:, None, None])
    decoder.load_state_dict({"scale": torch.tensor([.5, .6, .7])[:, None,
                                                                  None]},
                            strict=True)
    torch.testing.assert_close(decoder.scale, torch.tensor([.5, .6, .7]))
    scalar = LaplaceDecoder(std=2.)
    scalar.load_state_dict({"scale": torch.tensor([0.25])}, strict=True)
    assert scalar.scale.tolist() == [0.25]


def test_earlier_ddm_fast_encoder_layout_still_loads_strictly():
    encoder = GaussianEncoder()
    encoder.load_state_dict({"mean": torch.tensor([2.]),
                             "std": torch.tensor([4.])}, strict=True)
    assert encoder(torch.tensor([6.])).tolist() == [1.]
    decoder = GaussianDecoder()
    decoder.load_state_dict({"mean": torch.tensor([1.]),
                             "std": torch.tensor([2.]),
                             "scale": torch.tensor([3.])}, strict=True)
    assert decoder.std.tolist() == [2.] and decoder.scale.tolist() == [3.]


def test_sea_ice_style_module_state_loads_strictly_and_round_trips():
    """A whole LightningModule-like container as the sea-ice model holds its
    toolbox parts; the toolbox's state_dict keys load strictly."""
    def build():
        container = torch.nn.Module()
        container.scheduler = BinarizedScheduler(n_bins=100)
        container.clim_scheduler = LinearScheduler()
        container.param = VParam()
        container.encoder = GaussianEncoder(mean=torch.ones(3), std=torch.ones(3))
        container.decoder = GaussianDecoder(std=0.1)
        container.embedding = SinusoidalEmbedding(16)
        return container
    toolbox = {f"scheduler.{k}": v for k, v in
               toolbox_binarized_state(torch.ones(100) * 2).items()}
    toolbox.update({"clim_scheduler.gamma_min": torch.tensor(-10.),
                    "clim_scheduler.gamma_max": torch.tensor(10.),
                    "decoder.scale": torch.tensor([0.2]),
                    "embedding.frequencies": SinusoidalEmbedding(16)
                    .frequencies})
    model = build()
    model.load_state_dict(toolbox, strict=True)
    again = build()
    again.load_state_dict(model.state_dict(), strict=True)
    for key, value in again.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


# ------------------------------------------------ the toolbox's helpers
def test_truncation_helpers_match_the_toolbox_formulas():
    time = torch.linspace(0, 1, 11, dtype=torch.float64)
    # EDMSamplingScheduler.inverse_scheduler from the toolbox:
    # 1 - (exp(-g/(2 rho)) - s_max^(1/rho)) / (s_min^(1/rho) - s_max^(1/rho))
    edm = EDMSamplingScheduler(gamma_min=-10., gamma_max=10.).double()

    def edm_inverse(gamma):
        gamma = torch.as_tensor(gamma, dtype=torch.float64)
        return 1 - (torch.exp(-gamma / 14) - 80 ** (1 / 7)) / (
            0.002 ** (1 / 7) - 80 ** (1 / 7))
    torch.testing.assert_close(edm.inverse_scheduler(3.), edm_inverse(3.))
    torch.testing.assert_close(edm.get_time_shift(), edm_inverse(10.))
    torch.testing.assert_close(edm.get_time_scale(),
                               edm_inverse(-10.) - edm_inverse(10.))
    torch.testing.assert_close(
        edm.truncate_time(time),
        edm_inverse(10.) + (edm_inverse(-10.) - edm_inverse(10.)) * time)
    # CosineScheduler (shift 0): 2/pi arctan(exp(-gamma/2))
    cosine = CosineScheduler().double()
    torch.testing.assert_close(
        cosine.inverse_scheduler(torch.tensor([-4., 0., 4.],
                                              dtype=torch.float64)),
        2 / torch.pi * torch.atan(torch.exp(
            -torch.tensor([-4., 0., 4.], dtype=torch.float64) / 2)))
    # EDMTrainingScheduler: Phi((centre - gamma) / std)
    training = EDMTrainingScheduler(gamma_mean=1., gamma_std=2.).double()
    normal = torch.distributions.Normal(torch.tensor(1., dtype=torch.float64),
                                        torch.tensor(2., dtype=torch.float64))
    torch.testing.assert_close(training.inverse_scheduler(0.5),
                               1 - normal.cdf(torch.tensor(0.5).double()))


def test_binarized_integral_helpers_match_the_toolbox():
    values = torch.tensor([1., 3., 2., 4.], dtype=torch.float64)
    scheduler = BinarizedScheduler(n_bins=4, gamma_min=-3., gamma_max=3.,
                                   gamma_limits=(-4., 4.)).double()
    scheduler.set_bin_values(values)
    limits = scheduler.bin_limits
    assert limits.tolist() == [-4., -2., 0., 2., 4.]
    assert float(scheduler.dx) == 2.
    gamma = torch.tensor([-4., -3., -2., 0.5, 4.], dtype=torch.float64)
    assert scheduler.bin_search(gamma, limits).tolist() == [0, 0, 1, 2, 3]
    # bin_integral = [0, 1, 4, 6, 10]; C(g) = left + (g - edge) * v / dx
    torch.testing.assert_close(
        scheduler.evaluate_integral(gamma),
        torch.tensor([0., 0.5, 1., 4 + 0.5 * 2 / 2, 10.],
                     dtype=torch.float64))
    low, scale = scheduler.normalization
    assert float(low) == 0.5 and float(scale) == (6 + 1 * 4 / 2) - 0.5


def test_combined_decoder_enumerate_decoder_in():
    decoder = CombinedDecoder({"a": GaussianDecoder(), "b": LaplaceDecoder()})
    latent = torch.arange(2 * 2 * 3, dtype=torch.float32).view(2, 2, 3)
    pairs = list(decoder.enumerate_decoder_in(latent))
    assert [k for k, _ in pairs] == [0, 1]
    assert pairs[0][1][0] is decoder.base_decoders["a"]
    assert torch.equal(pairs[1][1][1], latent[:, 1:2])


def test_plain_function_as_param():
    def v_function(prediction, in_data, alpha, sigma, gamma, **kwargs):
        return alpha * in_data - sigma * prediction
    param = get_param(v_function)
    assert isinstance(param, FunctionParam)
    gamma = torch.linspace(-9, 9, 13, dtype=torch.float64)
    for method in ("denoise_coefficients", "noise_coefficients",
                   "target_coefficients"):
        for ours, expected in zip(getattr(param, method)(gamma),
                                  getattr(VParam(), method)(gamma)):
            torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(param.error_weight(gamma),
                               VParam().error_weight(gamma))
    # called like the toolbox calls param
    z, f = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3,
                                                               dtype=torch.float64)
    g = torch.linspace(-2, 2, 4, dtype=torch.float64)[:, None]
    alpha, sigma = torch.sigmoid(g).sqrt(), torch.sigmoid(-g).sqrt()
    torch.testing.assert_close(
        param(prediction=f, in_data=z, alpha=alpha, sigma=sigma, gamma=g),
        alpha * z - sigma * f)
    # the fused loss takes it like a parameterization module
    loss_fn = ddm_fast.DiffusionLoss(LinearScheduler(), param=v_function)
    assert isinstance(loss_fn.param, FunctionParam)
    with pytest.raises(ValueError, match="linear"):
        get_param(lambda prediction, in_data, alpha, sigma, gamma:
                  in_data * prediction).denoise_coefficients(gamma)
    with pytest.raises(TypeError, match="param"):
        get_param(5)


def test_eps_parameterization_is_not_the_toolbox_formula():
    """Documented difference: x_hat = (z - sigma f) / alpha here, the
    toolbox's EPSParam.forward returned alpha z - sigma f."""
    z, f = torch.tensor([1.]), torch.tensor([0.5])
    gamma = torch.tensor([0.])
    alpha, sigma = torch.sigmoid(gamma).sqrt(), torch.sigmoid(-gamma).sqrt()
    ours = EPSParam()(f, z, alpha, sigma, gamma)
    torch.testing.assert_close(ours, (z - sigma * f) / alpha)
    assert not torch.allclose(ours, alpha * z - sigma * f)


def test_sinusoidal_embedding_of_a_gamma_shaped_like_the_data():
    layer = SinusoidalEmbedding(8)
    gamma = torch.tensor([0.2, 0.9]).view(2, 1, 1, 1)
    assert layer(gamma).shape == (2, 1, 1, 8)
    fourier = RandomFourierLayer(in_features=1, n_neurons=4)
    assert fourier(torch.rand(3, 1)).shape == (3, 4)
