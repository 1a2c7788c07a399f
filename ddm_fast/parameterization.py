"""Parameterizations of the denoising network's output (docs/math.md,
"Parameterizations").

Every parameterization is affine in its tensors with per-sample coefficients
(docs/math.md, "The coefficient algebra"). Each class therefore states its
whole story as four small coefficient functions of gamma:

- ``target_coefficients``:  f* = a * x + c * eps
- ``denoise_coefficients``: x_hat = p * z + q * f
- ``noise_coefficients``:   eps_hat = r * z + s * f
- ``error_weight``:         w with  w * (f - f*)^2 = (eps_hat(f) - eps)^2

The tensor-level methods (``forward``, ``get_noise``, ``estimate_errors``,
with ddm_dynamical's signatures) are the plain-PyTorch reference built from
those coefficients; the fused ops and samplers use the coefficients directly.
alpha and sigma arguments are accepted for compatibility; the coefficients
are computed from gamma alone, stably (docs/math.md, "Conventions").

A plain function ``f(prediction, in_data, alpha, sigma, gamma) -> x_hat``
(ddm_dynamical accepted any callable as ``param``) is wrapped by
:class:`FunctionParam`, which reads its coefficients off the function.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Tuple, Union

import torch

from ._compat import warn_ignored_kwargs
from .utils import alpha_sigma

__all__ = [
    "Parameterization",
    "EPSParam",
    "VParam",
    "DataParam",
    "ScoreParam",
    "FlowOTParam",
    "EDMParam",
    "FunctionParam",
    "get_param",
]

Pair = Tuple[torch.Tensor, torch.Tensor]


def _as_tensor(gamma) -> torch.Tensor:
    if isinstance(gamma, torch.Tensor):
        return gamma
    return torch.as_tensor(gamma, dtype=torch.float64)


class Parameterization(torch.nn.Module):
    """Base class. Subclasses define the four coefficient functions."""

    name: str = ""

    def __init__(self, **kwargs):
        super().__init__()
        warn_ignored_kwargs(self, kwargs)

    # -- coefficient algebra (vectors of per-sample gamma) -------------------
    def target_coefficients(self, gamma: torch.Tensor) -> Pair:
        raise NotImplementedError

    def denoise_coefficients(self, gamma: torch.Tensor) -> Pair:
        raise NotImplementedError

    def noise_coefficients(self, gamma: torch.Tensor) -> Pair:
        raise NotImplementedError

    def error_weight(self, gamma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- reference tensor functions (ddm_dynamical's API) --------------------
    def forward(self, prediction: torch.Tensor, in_data: torch.Tensor,
                alpha: torch.Tensor = None, sigma: torch.Tensor = None,
                gamma: torch.Tensor = None, *args, **kwargs) -> torch.Tensor:
        """Denoised state x_hat from the network output and the noised z."""
        p, q = self.denoise_coefficients(_require_gamma(gamma))
        return p * in_data + q * prediction

    def get_noise(self, prediction: torch.Tensor, in_data: torch.Tensor,
                  alpha: torch.Tensor = None, sigma: torch.Tensor = None,
                  gamma: torch.Tensor = None, *args, **kwargs) -> torch.Tensor:
        """Noise eps_hat implied by the network output."""
        r, s = self.noise_coefficients(_require_gamma(gamma))
        return r * in_data + s * prediction

    def get_target(self, target: torch.Tensor, noise: torch.Tensor,
                   gamma: torch.Tensor) -> torch.Tensor:
        a, c = self.target_coefficients(_require_gamma(gamma))
        return a * target + c * noise

    def estimate_errors(self, prediction: torch.Tensor, in_data: torch.Tensor,
                        target: torch.Tensor, noise: torch.Tensor,
                        alpha: torch.Tensor = None, sigma: torch.Tensor = None,
                        gamma: torch.Tensor = None, *args,
                        **kwargs) -> torch.Tensor:
        """Element-wise squared error in noise units, w * (f - f*)^2."""
        gamma = _require_gamma(gamma)
        return self.error_weight(gamma) * (
            prediction - self.get_target(target, noise, gamma)).pow(2)

    def extra_repr(self) -> str:
        return self.name


def _require_gamma(gamma) -> torch.Tensor:
    if gamma is None:
        raise ValueError("gamma (the log-SNR, broadcastable to the data) is "
                         "required by every parameterization")
    return _as_tensor(gamma)


class EPSParam(Parameterization):
    """The network predicts the noise: f* = eps."""
    name = "eps"

    def target_coefficients(self, gamma):
        return torch.zeros_like(gamma), torch.ones_like(gamma)

    def denoise_coefficients(self, gamma):
        alpha, sigma = alpha_sigma(gamma)
        return 1 / alpha, -sigma / alpha

    def noise_coefficients(self, gamma):
        return torch.zeros_like(gamma), torch.ones_like(gamma)

    def error_weight(self, gamma):
        return torch.ones_like(gamma)


class VParam(Parameterization):
    """v-prediction (Salimans & Ho 2022): f* = alpha eps - sigma x, w = alpha^2."""
    name = "v"

    def target_coefficients(self, gamma):
        alpha, sigma = alpha_sigma(gamma)
        return -sigma, alpha

    def denoise_coefficients(self, gamma):
        alpha, sigma = alpha_sigma(gamma)
        return alpha, -sigma

    def noise_coefficients(self, gamma):
        alpha, sigma = alpha_sigma(gamma)
        return sigma, alpha

    def error_weight(self, gamma):
        return torch.sigmoid(gamma)


class DataParam(Parameterization):
    """The network predicts the clean data: f* = x."""
    name = "data"

    def target_coefficients(self, gamma):
        return torch.ones_like(gamma), torch.zeros_like(gamma)

    def denoise_coefficients(self, gamma):
        return torch.zeros_like(gamma), torch.ones_like(gamma)

    def noise_coefficients(self, gamma):
        alpha, sigma = alpha_sigma(gamma)
        return 1 / sigma, -torch.exp(0.5 * gamma)  # -alpha/sigma

    def error_weight(self, gamma):
        return torch.exp(gamma)


class ScoreParam(Parameterization):
    """The network predicts the score of the VP marginal: f* = -eps/sigma."""
    name = "score"

    def target_coefficients(self, gamma):
        alpha, sigma = alpha_sigma(gamma)
        return torch.zeros_like(gamma), -1 / sigma

    def denoise_coefficients(self, gamma):
        alpha, sigma = alpha_sigma(gamma)
        return 1 / alpha, sigma * sigma / alpha

    def noise_coefficients(self, gamma):
        alpha, sigma = alpha_sigma(gamma)
        return torch.zeros_like(gamma), -sigma

    def error_weight(self, gamma):
        return torch.sigmoid(-gamma)


class FlowOTParam(Parameterization):
    """Rectified flow / OT flow matching (Kingma & Gao 2023, eq. 63-77).

    The network predicts the velocity f* = eps - x of the straight path
    z_f = (1 - t_f) x + t_f eps with t_f = sigmoid(-gamma/2) and
    z_f = z / (alpha + sigma). ddm_dynamical used z instead of z_f and
    called a non-existent ``get_time``; both are corrected here.
    """
    name = "flow"

    @staticmethod
    def invert_gamma(gamma: torch.Tensor) -> torch.Tensor:
        """Flow time t_f of a log-SNR (Kingma & Gao 2023, eq. 65)."""
        return torch.sigmoid(-0.5 * _as_tensor(gamma))

    def _flow_scale(self, gamma):
        alpha, sigma = alpha_sigma(gamma)
        return 1 / (alpha + sigma), self.invert_gamma(gamma)

    def target_coefficients(self, gamma):
        return -torch.ones_like(gamma), torch.ones_like(gamma)

    def denoise_coefficients(self, gamma):
        scale, t_f = self._flow_scale(gamma)
        return scale, -t_f

    def noise_coefficients(self, gamma):
        scale, t_f = self._flow_scale(gamma)
        return scale, torch.sigmoid(0.5 * gamma)  # 1 - t_f, without cancellation

    def error_weight(self, gamma):
        return torch.sigmoid(0.5 * gamma).pow(2)


class EDMParam(Parameterization):
    """EDM preconditioning (Karras et al. 2022) in the exploding form.

    x_hat = c_skip x_e + c_out f with x_e = z/alpha, sigma_tilde =
    exp(-gamma/2); the coefficients are written in cancellation-free forms.
    """
    name = "edm"

    def __init__(self, sigma_data: float = 1., **kwargs):
        super().__init__(**kwargs)
        if isinstance(sigma_data, bool) or \
                not isinstance(sigma_data, numbers.Real):
            raise TypeError("sigma_data must be a real number, got "
                            f"{type(sigma_data).__name__}")
        if not (0 < float(sigma_data) < math.inf):
            raise ValueError(f"sigma_data must be finite and > 0, got "
                             f"{sigma_data}")
        self.sigma_data = float(sigma_data)

    def _terms(self, gamma):
        s_t = torch.exp(-0.5 * gamma)
        sd = self.sigma_data
        norm = torch.sqrt(s_t * s_t + sd * sd)
        return s_t, sd, norm

    def c_skip(self, gamma):
        s_t, sd, norm = self._terms(_as_tensor(gamma))
        return (sd / norm) ** 2

    def c_out(self, gamma):
        s_t, sd, norm = self._terms(_as_tensor(gamma))
        return s_t * sd / norm

    def c_in(self, gamma):
        """Input scaling 1/sqrt(sigma_tilde^2 + sigma_d^2) for the exploding
        state x_e (a ``pre_func`` may apply it)."""
        s_t, sd, norm = self._terms(_as_tensor(gamma))
        return 1 / norm

    def target_coefficients(self, gamma):
        s_t, sd, norm = self._terms(gamma)
        # (1 - c_skip)/c_out and -c_skip sigma_tilde / c_out, simplified
        return s_t / (sd * norm), -sd / norm

    def denoise_coefficients(self, gamma):
        alpha, _ = alpha_sigma(gamma)
        s_t, sd, norm = self._terms(gamma)
        return (sd / norm) ** 2 / alpha, s_t * sd / norm

    def noise_coefficients(self, gamma):
        _, sigma = alpha_sigma(gamma)
        s_t, sd, norm = self._terms(gamma)
        # (1 - c_skip)/(alpha sigma_tilde) = sigma_tilde^2/(norm^2 sigma)
        return (s_t / norm) ** 2 / sigma, -sd / norm

    def error_weight(self, gamma):
        s_t, sd, norm = self._terms(gamma)
        return (sd / norm) ** 2

    def extra_repr(self) -> str:
        return f"edm, sigma_data={self.sigma_data}"


class FunctionParam(Parameterization):
    """A parameterization given as a plain function (or any callable
    module), called as ddm_dynamical called ``param``:
    ``function(prediction=f, in_data=z, alpha=alpha, sigma=sigma,
    gamma=gamma) -> x_hat``.

    Every parameterization is linear in (z, f), x_hat = p z + q f
    (docs/math.md, "The coefficient algebra"), and the rest follows from p
    and q: with z = alpha x + sigma eps,

    - eps_hat = (z - alpha x_hat) / sigma: r = (1 - alpha p) / sigma,
      s = -alpha q / sigma;
    - the target f* with x_hat(z, f*) = x: a = (1 - alpha p) / q,
      c = -sigma p / q;
    - the weight w = s^2, since eps_hat(f) - eps = s (f - f*).

    p and q are read off the function by evaluating it on zeros and ones
    (three calls on per-sample vectors). A function that is not of that form
    (an offset, or not linear) raises a ValueError: the fused samplers and
    the loss could not represent it. That check reads one value on the
    host, so it runs for gammas off the GPU only (on CUDA nothing here
    synchronises).
    """
    name = "function"

    def __init__(self, function: Callable, **kwargs):
        super().__init__(**kwargs)
        if not callable(function):
            raise TypeError("function must be callable as function("
                            "prediction, in_data, alpha, sigma, gamma), got "
                            f"{type(function).__name__}")
        self.function = function

    def _call(self, prediction, in_data, gamma):
        alpha, sigma = alpha_sigma(gamma)
        return self.function(prediction=prediction, in_data=in_data,
                             alpha=alpha, sigma=sigma, gamma=gamma)

    def forward(self, prediction: torch.Tensor, in_data: torch.Tensor,
                alpha: torch.Tensor = None, sigma: torch.Tensor = None,
                gamma: torch.Tensor = None, *args, **kwargs) -> torch.Tensor:
        """The function itself (alpha and sigma from gamma when not given)."""
        gamma = _require_gamma(gamma)
        if alpha is None or sigma is None:
            alpha, sigma = alpha_sigma(gamma)
        return self.function(prediction=prediction, in_data=in_data,
                             alpha=alpha, sigma=sigma, gamma=gamma, **kwargs)

    def denoise_coefficients(self, gamma):
        gamma = _as_tensor(gamma)
        zeros, ones = torch.zeros_like(gamma), torch.ones_like(gamma)
        offset = self._call(zeros, zeros, gamma)
        p = self._call(zeros, ones, gamma) - offset
        q = self._call(ones, zeros, gamma) - offset
        if not gamma.is_cuda:
            both = self._call(ones, ones, gamma)
            scale = p.abs() + q.abs()
            tolerance = 1e-4 * scale + torch.finfo(scale.dtype).tiny
            finite = torch.isfinite(gamma)
            off = (offset.abs() > tolerance) | ((both - p - q).abs() >
                                                 tolerance)
            if bool((off & finite).any()):
                raise ValueError(
                    "param: the function must be of the form p(gamma) * "
                    "in_data + q(gamma) * prediction (linear, no offset), as "
                    "every parameterization is; it is not at gamma = "
                    f"{gamma[off & finite].flatten()[:3].tolist()}")
        return p, q

    def noise_coefficients(self, gamma):
        gamma = _as_tensor(gamma)
        p, q = self.denoise_coefficients(gamma)
        alpha, sigma = alpha_sigma(gamma)
        return (1 - alpha * p) / sigma, -alpha * q / sigma

    def target_coefficients(self, gamma):
        gamma = _as_tensor(gamma)
        p, q = self.denoise_coefficients(gamma)
        alpha, sigma = alpha_sigma(gamma)
        return (1 - alpha * p) / q, -sigma * p / q

    def error_weight(self, gamma):
        return self.noise_coefficients(gamma)[1].square()

    def extra_repr(self) -> str:
        return f"function={getattr(self.function, '__name__', self.function)!r}"


_BY_NAME = {
    "eps": EPSParam, "v": VParam, "data": DataParam, "score": ScoreParam,
    "flow": FlowOTParam, "edm": EDMParam,
}


def get_param(param: Union[str, Parameterization, Callable, None]
              ) -> Parameterization:
    """A parameterization from a module, its name (None: eps), or a plain
    callable ``f(prediction, in_data, alpha, sigma, gamma) -> x_hat``
    (wrapped in :class:`FunctionParam`)."""
    if param is None:
        return EPSParam()
    if isinstance(param, Parameterization):
        return param
    if isinstance(param, str):
        try:
            return _BY_NAME[param.lower()]()
        except KeyError:
            raise ValueError(
                f"param must be one of {sorted(_BY_NAME)} or a Parameterization "
                f"module, got {param!r}") from None
    if callable(param):
        return FunctionParam(param)
    raise TypeError("param must be a str, a ddm_fast.parameterization "
                    "module or a callable f(prediction, in_data, alpha, "
                    f"sigma, gamma), got {type(param).__name__}")
