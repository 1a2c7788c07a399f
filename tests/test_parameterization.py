"""docs/math.md, "Parameterizations" and "Weightings": every
parameterization's identities and the weightings."""
import math

import pytest
import torch

from ddm_fast import parameterization as P
from ddm_fast import weighting as W
from ddm_fast.utils import alpha_sigma

NAMES = ["eps", "v", "data", "score", "flow", "edm"]
GAMMAS = torch.linspace(-20, 20, 81, dtype=torch.float64)


def _setup(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(81, 5, generator=gen, dtype=torch.float64)
    eps = torch.randn(81, 5, generator=gen, dtype=torch.float64)
    f = torch.randn(81, 5, generator=gen, dtype=torch.float64)
    gamma = GAMMAS[:, None]
    alpha, sigma = alpha_sigma(gamma)
    return x, eps, f, gamma, alpha, sigma, alpha * x + sigma * eps


@pytest.mark.parametrize("name", NAMES)
def test_target_recovers_data_and_noise(name):
    x, eps, f, gamma, alpha, sigma, z = _setup()
    param = P.get_param(name)
    target = param.get_target(x, eps, gamma)
    x_hat = param(target, z, alpha, sigma, gamma)
    eps_hat = param.get_noise(target, z, alpha, sigma, gamma)
    torch.testing.assert_close(x_hat, x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_weight_converts_error_to_noise_units(name):
    x, eps, f, gamma, alpha, sigma, z = _setup(1)
    param = P.get_param(name)
    lhs = param.estimate_errors(f, z, x, eps, alpha, sigma, gamma)
    rhs = (param.get_noise(f, z, alpha, sigma, gamma) - eps) ** 2
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_coefficients_finite_over_gamma_range(name):
    param = P.get_param(name)
    gamma = torch.linspace(-30, 30, 121, dtype=torch.float32)
    for pair in (param.target_coefficients(gamma),
                 param.denoise_coefficients(gamma),
                 param.noise_coefficients(gamma)):
        for c in pair:
            assert torch.isfinite(c).all()
    assert torch.isfinite(param.error_weight(gamma)).all()


def test_table_weights_match_spec():
    gamma = GAMMAS
    alpha, sigma = alpha_sigma(gamma)
    t_f = torch.sigmoid(-gamma / 2)
    s_t = torch.exp(-gamma / 2)
    expected = {
        "eps": torch.ones_like(gamma),
        "v": alpha ** 2,
        "data": alpha ** 2 / sigma ** 2,
        "score": sigma ** 2,
        "flow": (1 - t_f) ** 2,
        "edm": 1.0 / (s_t ** 2 + 1.0),
    }
    for name, w in expected.items():
        torch.testing.assert_close(P.get_param(name).error_weight(gamma), w,
                                   rtol=1e-9, atol=1e-300)


def test_edm_preconditioning_with_sigma_data():
    param = P.EDMParam(sigma_data=0.5)
    gamma = torch.tensor([-4.0, 0.0, 3.0], dtype=torch.float64)
    s_t = torch.exp(-gamma / 2)
    torch.testing.assert_close(param.c_skip(gamma), 0.25 / (s_t ** 2 + 0.25))
    torch.testing.assert_close(param.c_out(gamma), s_t * 0.5 / (s_t ** 2 + 0.25).sqrt())
    torch.testing.assert_close(param.c_in(gamma), 1 / (s_t ** 2 + 0.25).sqrt())
    # x_hat = c_skip x_e + c_out f with x_e = z / alpha
    z = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    f = torch.tensor([1.0, 0.5, -0.7], dtype=torch.float64)
    alpha, _ = alpha_sigma(gamma)
    expected = param.c_skip(gamma) * z / alpha + param.c_out(gamma) * f
    torch.testing.assert_close(param(f, z, gamma=gamma), expected)


def test_flow_state_is_straight_path():
    x, eps, f, gamma, alpha, sigma, z = _setup(2)
    t_f = P.FlowOTParam.invert_gamma(gamma)
    z_f = z / (alpha + sigma)
    torch.testing.assert_close(z_f, (1 - t_f) * x + t_f * eps)


def test_stable_alpha_sigma_in_float32():
    gamma = torch.tensor([-30.0, -17.0, 0.0, 17.0, 30.0])
    alpha, sigma = alpha_sigma(gamma)
    ref_a, ref_s = alpha_sigma(gamma.double())
    torch.testing.assert_close(alpha.double(), ref_a, rtol=1e-6, atol=0)
    torch.testing.assert_close(sigma.double(), ref_s, rtol=1e-6, atol=0)
    assert sigma[-1] > 0  # sqrt(1 - alpha^2) would give exactly 0 here


def test_get_param_errors():
    with pytest.raises(ValueError, match="param must be one of"):
        P.get_param("noise")
    with pytest.raises(TypeError, match="param"):
        P.get_param(3)
    with pytest.raises(ValueError, match="sigma_data"):
        P.EDMParam(sigma_data=0)
    with pytest.raises(ValueError, match="gamma"):
        P.EPSParam()(torch.ones(2), torch.ones(2))
    assert isinstance(P.get_param(None), P.EPSParam)


@pytest.mark.parametrize("gamma", [-7.5, -1.0, 0.0, 2.0, 9.0])
def test_weightings_match_spec(gamma):
    g = torch.tensor(gamma, dtype=torch.float64)
    assert W.ELBOWeighting()(g).item() == 1.0
    assert math.isclose(W.SigmoidWeighting()(g).item(),
                        1 / (1 + math.exp(-(2 - gamma))), rel_tol=1e-12)
    assert math.isclose(W.ExponentialWeighting()(g).item(),
                        math.exp(-0.5 * gamma), rel_tol=1e-12)
    pdf = math.exp(-(gamma - 2.4) ** 2 / (2 * 2.4 ** 2)) / (2.4 * math.sqrt(2 * math.pi))
    assert math.isclose(W.EDMWeighting()(g).item(),
                        pdf * (math.exp(-gamma) + 0.25), rel_tol=1e-12)


def test_weighting_errors():
    with pytest.raises(ValueError, match="scale"):
        W.EDMWeighting(scale=0)
    with pytest.raises(ValueError, match="weighting"):
        W.get_weighting("bogus")
