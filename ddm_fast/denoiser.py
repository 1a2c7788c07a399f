"""The one owner of the network's conditioning: :class:`Denoiser`
(docs/math.md, "The network's conditioning").

A denoising network never sees gamma itself: it sees the normalised log-SNR
``(gamma - gamma_min) / (gamma_max - gamma_min)``, its input goes through
``pre_func`` and its output through ``post_func``, and the parameterization
turns that output into the denoised estimate x_hat (docs/math.md,
"Parameterizations"). Training (:class:`ddm_fast.loss.DiffusionLoss`), every
sampler and the optimal model go through one :class:`Denoiser`, so for the
same gamma the network is handed the same input in training and in sampling
(in the spirit of k-diffusion's ``Denoiser`` and EDM's preconditioning
wrapper).

The gamma range. There is one default for the whole library,
``DEFAULT_GAMMA_RANGE = (-10, 10)``: the default range of every scheduler,
and the range ddm_dynamical's training normalised with (its Lightning module
normalises with the scheduler's range and copies it onto the sampler). A
range given explicitly wins. A range not given is resolved, at the first
network call, from the range the network is already *conditioned with*:

* a network declares it with the attribute ``ddm_fast_gamma_range``
  (``(gamma_min, gamma_max)``; :class:`ddm_fast.optimal_model.OptimalModel`
  does), or
* the first :class:`Denoiser` that calls a network records its range there.

So ``DiffusionLoss(scheduler, gamma_min=-15, gamma_max=15)`` in training and
a ``HeunSampler`` built without a range afterwards hand the network the same
normalised gamma. A Denoiser whose explicit range differs from the one the
network is conditioned with warns (:class:`GammaRangeMismatchWarning`, once
per Denoiser): that network would see inputs it was not trained on. The
record is a plain attribute of the network object, not part of its
state_dict: after loading a checkpoint in a new process, pass the training
range (or keep the library default) explicitly.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Tuple, Union

import torch

from ._math import alpha_sigma
from ._validation import check_float_tensor, check_per_sample
from . import ops
from .ops import coefficient_dtype

__all__ = ["Denoiser", "DEFAULT_GAMMA_RANGE", "GAMMA_RANGE_ATTRIBUTE",
           "GammaRangeMismatchWarning", "algebra_dtype", "per_sample_gamma",
           "resolve_gamma_bound", "check_gamma_bounds", "as_denoiser",
           "normalize", "conditioned_object", "resolve_param", "default_preprocessing",
           "default_postprocessing"]

DEFAULT_GAMMA_RANGE: Tuple[float, float] = (-10., 10.)
GAMMA_RANGE_ATTRIBUTE = "ddm_fast_gamma_range"

Bound = Union[float, torch.Tensor]


class GammaRangeMismatchWarning(UserWarning):
    """A network is called with a gamma range other than the one it is
    conditioned with (trained with, or declared)."""


def default_preprocessing(in_data: torch.Tensor, alpha: torch.Tensor,
                          sigma: torch.Tensor, gamma: torch.Tensor,
                          **conditioning) -> torch.Tensor:
    """The network input is the noised state itself."""
    return in_data


def default_postprocessing(prediction: torch.Tensor, in_data: torch.Tensor,
                           alpha: torch.Tensor, sigma: torch.Tensor,
                           gamma: torch.Tensor,
                           **conditioning) -> torch.Tensor:
    """The network output is used as it is."""
    return prediction


def algebra_dtype(device) -> torch.dtype:
    """dtype of the per-sample coefficient algebra: float64 (cheap on
    vectors of length B), float32 where a device has no float64 (MPS)."""
    return torch.float32 if torch.device(device).type == "mps" \
        else torch.float64


def per_sample_gamma(name: str, gamma, like: torch.Tensor) -> torch.Tensor:
    """``gamma`` (number, 0-d, (B,) or (B, 1, ...)) as a (B,) vector in the
    coefficient-algebra dtype, whatever the data's dtype."""
    dtype = algebra_dtype(like.device)
    if isinstance(gamma, (int, float)) and not isinstance(gamma, bool):
        return torch.full((like.shape[0],), float(gamma), dtype=dtype,
                          device=like.device)
    return check_per_sample(name, gamma, like.shape[0], like).to(dtype)


def resolve_gamma_bound(name: str, value) -> Optional[Bound]:
    """A gamma bound as given: None, a finite float, or a 0-d tensor (a
    scheduler's learnable bound; kept as a tensor, so that reading it never
    synchronises with a device)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"{name} must be a float or a one-element float "
                             f"tensor, got {value.dtype} of shape "
                             f"{tuple(value.shape)}")
        if value.device.type == "cpu":
            return _finite(name, float(value.detach()))
        return value.detach().reshape(())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or None, got "
                        f"{type(value).__name__}")
    return _finite(name, float(value))


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_gamma_bounds(gamma_min, gamma_max) -> Tuple[Optional[Bound],
                                                      Optional[Bound]]:
    """Both bounds or neither (None: the network's range); numbers finite
    and ordered. Returns them resolved (see :func:`resolve_gamma_bound`)."""
    gamma_min = resolve_gamma_bound("gamma_min", gamma_min)
    gamma_max = resolve_gamma_bound("gamma_max", gamma_max)
    if (gamma_min is None) != (gamma_max is None):
        raise ValueError("give gamma_min and gamma_max together (or "
                         "neither, for the range the network is "
                         "conditioned with)")
    if gamma_min is not None:
        _check_order(gamma_min, gamma_max)
    return gamma_min, gamma_max


def _check_order(gamma_min: Bound, gamma_max: Bound) -> None:
    if isinstance(gamma_min, float) and isinstance(gamma_max, float) \
            and not gamma_min < gamma_max:
        raise ValueError("gamma_min must be smaller than gamma_max, got "
                         f"gamma_min={gamma_min}, gamma_max={gamma_max}")


def check_callable(name: str, value, optional: bool = True):
    if value is None and optional:
        return None
    if not callable(value):
        expected = "callable or None" if optional else "callable"
        raise TypeError(f"{name} must be {expected}, got "
                        f"{type(value).__name__}")
    return value


def conditioned_object(network):
    """The object that carries a network's range record: the network under
    the wrappers that do not change it (``__wrapped__`` of a wrapping
    function, ``.module`` of (Distributed)DataParallel, ``_orig_mod`` of
    torch.compile), so that training through a wrapper and sampling with the
    bare network agree."""
    seen = set()
    while id(network) not in seen:
        seen.add(id(network))
        if isinstance(network, (torch.nn.parallel.DistributedDataParallel,
                                torch.nn.DataParallel)):
            network = network.module
        elif isinstance(network, torch.nn.Module) and \
                "_orig_mod" in network._modules:
            network = network._modules["_orig_mod"]
        elif not isinstance(network, torch.nn.Module) and \
                "__wrapped__" in getattr(network, "__dict__", {}):
            network = network.__dict__["__wrapped__"]
    return network


def resolve_param(param):
    """A Parameterization (from a module, a name or None: eps), or a plain
    function ``param(prediction, in_data, alpha, sigma, gamma, **cond)``
    returning x_hat, as ddm_dynamical accepted (sampling only: training
    needs the parameterization's target coefficients)."""
    from .parameterization import Parameterization, get_param
    if param is None or isinstance(param, (str, Parameterization)):
        return get_param(param)
    if callable(param) and not isinstance(param, torch.nn.Module):
        return param
    return get_param(param)  # its error names what param may be


def is_function_param(param) -> bool:
    from .parameterization import Parameterization
    return not isinstance(param, Parameterization)


def _declared_range(network) -> Optional[Tuple[Bound, Bound]]:
    declared = getattr(conditioned_object(network), GAMMA_RANGE_ATTRIBUTE,
                       None)
    if declared is None:
        return None
    try:
        lo, hi = declared
    except (TypeError, ValueError):
        raise ValueError(f"{GAMMA_RANGE_ATTRIBUTE} of the network must be a "
                         f"pair (gamma_min, gamma_max), got {declared!r}"
                         ) from None
    return (resolve_gamma_bound("gamma_min", lo),
            resolve_gamma_bound("gamma_max", hi))


def _same_range(a, b) -> bool:
    """Equal ranges; device tensors are not compared (that would sync)."""
    if any(isinstance(v, torch.Tensor) for v in (*a, *b)):
        return True
    return a[0] == b[0] and a[1] == b[1]


class Denoiser(torch.nn.Module):
    """Network + parameterization + gamma normalisation + pre/post functions.

    ``network(pre_func(in_data=z, alpha, sigma, gamma, [mask], **cond),
    normalized_gamma=(B, 1) tensor, [mask=mask], **cond)`` is the network
    call (``mask`` is handed on only when given, as ddm_dynamical does with
    its conditioning); ``post_func(prediction=..., in_data=z, alpha, sigma,
    gamma, [mask], **cond)`` gives the network output f, and ``param`` maps
    f to x_hat = p z + q f. alpha, sigma and gamma reach pre/post as
    (B, 1, ..., 1) tensors in the data's dtype. ``gamma_min``/``gamma_max``:
    the normalisation range (None: see the module docstring).

    ``prediction(z, gamma, ...)`` returns f (training's target is defined on
    it), ``forward(z, gamma, ...)`` returns x_hat, ``denoise_coefficients``
    gives (p, q) for fused steps.
    """

    def __init__(self, network: Callable,
                 param=None,
                 gamma_min=None, gamma_max=None,
                 pre_func: Optional[Callable] = None,
                 post_func: Optional[Callable] = None):
        super().__init__()
        if isinstance(network, Denoiser):
            raise TypeError("network is already a Denoiser: pass it directly "
                            "instead of wrapping it again")
        self.network = check_callable("network", network, optional=False)
        self.param = resolve_param(param)
        self.gamma_min, self.gamma_max = check_gamma_bounds(gamma_min,
                                                            gamma_max)
        self.pre_func = check_callable("pre_func", pre_func) \
            or default_preprocessing
        self.post_func = check_callable("post_func", post_func) \
            or default_postprocessing
        self._warned = False

    # ------------------------------------------------------------- range
    @property
    def gamma_range(self) -> Tuple[Bound, Bound]:
        """The (gamma_min, gamma_max) the network is called with: the
        explicit range, else the one the network is conditioned with, else
        ``DEFAULT_GAMMA_RANGE``. Reading it changes nothing."""
        if self.gamma_min is not None:
            return self.gamma_min, self.gamma_max
        declared = _declared_range(self.network)
        return declared if declared is not None else DEFAULT_GAMMA_RANGE

    def _range_for_call(self) -> Tuple[Bound, Bound]:
        """:attr:`gamma_range` at a network call: records it on a network
        that has none, warns once if an explicit range differs from the
        network's."""
        declared = _declared_range(self.network)
        chosen = self.gamma_range
        if declared is None:
            try:
                setattr(conditioned_object(self.network),
                        GAMMA_RANGE_ATTRIBUTE, chosen)
            except (AttributeError, TypeError):
                pass  # a builtin callable: nothing to record on
        elif not self._warned and not _same_range(chosen, declared):
            self._warned = True
            warnings.warn(
                f"the network is conditioned with the gamma range "
                f"{declared} (it was trained or declared so) but this "
                f"Denoiser normalises gamma with {chosen}: the network "
                f"sees a normalised gamma it was not trained on. Pass "
                f"the same gamma_min/gamma_max, or none.",
                GammaRangeMismatchWarning, stacklevel=4)
        return chosen

    def normalized_gamma(self, gamma: torch.Tensor) -> torch.Tensor:
        """(gamma - gamma_min) / (gamma_max - gamma_min), element-wise, with
        the range of :meth:`_range_for_call` (this is the network call)."""
        lo, hi = self._range_for_call()
        return normalize(gamma, lo, hi)

    # ---------------------------------------------------- network calls
    def denoise_coefficients(self, gamma: torch.Tensor):
        """(p, q) with x_hat = p z + q f, per sample."""
        if is_function_param(self.param):
            raise TypeError("param is a plain function: it gives x_hat, not "
                            "the coefficients of a parameterization (pass a "
                            "ddm_fast.parameterization module to train)")
        return self.param.denoise_coefficients(gamma)

    def estimate(self, z: torch.Tensor, gamma,
                 mask: Optional[torch.Tensor] = None, **conditioning):
        """(g, p, q) with x_hat = p z + q g: the network output f and the
        parameterization's coefficients, or, for a plain-function param,
        x_hat itself with (0, 1)."""
        f = self.prediction(z, gamma, mask, **conditioning)
        gamma = per_sample_gamma("gamma", gamma, z)
        if not is_function_param(self.param):
            p, q = self.param.denoise_coefficients(gamma)
            return f, p, q
        view = (z.shape[0],) + (1,) * (z.ndim - 1)
        alpha, sigma = alpha_sigma(gamma)
        if mask is not None:
            conditioning = dict(conditioning, mask=mask)
        denoised = self.param(prediction=f, in_data=z,
                              alpha=alpha.to(z.dtype).reshape(view),
                              sigma=sigma.to(z.dtype).reshape(view),
                              gamma=gamma.to(z.dtype).reshape(view),
                              **conditioning)
        return denoised, 0., 1.

    def prediction(self, z: torch.Tensor, gamma,
                   mask: Optional[torch.Tensor] = None,
                   **conditioning) -> torch.Tensor:
        """The network output f at the noised state ``z`` and per-sample
        ``gamma`` (number, (B,) or (B, 1, ...)), through pre/post."""
        check_float_tensor("z", z, min_ndim=1)
        gamma = per_sample_gamma("gamma", gamma, z)
        batch = z.shape[0]
        if mask is not None:
            conditioning = dict(conditioning, mask=mask)
        norm_gamma = self.normalized_gamma(gamma).to(z.dtype).reshape(batch, 1)
        if self.pre_func is default_preprocessing and \
                self.post_func is default_postprocessing:
            # identity pre/post: skip their statistics (host overhead)
            prediction = self.network(z, normalized_gamma=norm_gamma,
                                      **conditioning)
        else:
            view = (batch,) + (1,) * (z.ndim - 1)
            alpha, sigma = alpha_sigma(gamma)
            stats = {"alpha": alpha.to(z.dtype).reshape(view),
                     "sigma": sigma.to(z.dtype).reshape(view),
                     "gamma": gamma.to(z.dtype).reshape(view)}
            network_input = self.pre_func(in_data=z, **stats, **conditioning)
            prediction = self.network(network_input,
                                      normalized_gamma=norm_gamma,
                                      **conditioning)
            prediction = self.post_func(prediction=prediction, in_data=z,
                                        **stats, **conditioning)
        if not isinstance(prediction, torch.Tensor) or \
                prediction.shape != z.shape:
            raise ValueError(
                "denoising_network (after post_func) must return a tensor "
                f"of the state's shape {tuple(z.shape)}, got "
                f"{tuple(prediction.shape) if isinstance(prediction, torch.Tensor) else type(prediction).__name__}")
        return prediction

    def forward(self, z: torch.Tensor, gamma,
                mask: Optional[torch.Tensor] = None,
                **conditioning) -> torch.Tensor:
        """x_hat = p z + q f at the noised state ``z``, per-sample ``gamma``
        (one fused op; masked positions are 0)."""
        f, p, q = self.estimate(z, gamma, mask, **conditioning)
        if is_function_param(self.param):
            ones = torch.ones((z.shape[0], 1), device=z.device,
                              dtype=coefficient_dtype(z))
            return ops.affine([f], ones, mask)
        return ops.affine([z, f], torch.stack((p, q), 1).to(
            coefficient_dtype(z)), mask)

    def extra_repr(self) -> str:
        if self.gamma_min is None:
            return "gamma range: the network's (default " \
                f"{DEFAULT_GAMMA_RANGE})"
        return f"gamma_min={self.gamma_min}, gamma_max={self.gamma_max}"


def normalize(gamma, gamma_min, gamma_max):
    """(gamma - gamma_min) / (gamma_max - gamma_min) (no checks)."""
    return (gamma - gamma_min) / (gamma_max - gamma_min)


def as_denoiser(network, param=None, gamma_min=None, gamma_max=None,
                pre_func=None, post_func=None, *, owner: str) -> Denoiser:
    """``network`` itself if it is a :class:`Denoiser` (then ``owner`` must
    not set param, range or pre/post as well), else a Denoiser around it."""
    if isinstance(network, Denoiser):
        given = [name for name, value in (
            ("param", param), ("gamma_min", gamma_min),
            ("gamma_max", gamma_max), ("pre_func", pre_func),
            ("post_func", post_func)) if value is not None]
        if given:
            raise ValueError(
                f"{owner} got a Denoiser and also {', '.join(given)}: set "
                f"them on the Denoiser (it owns the network's conditioning)")
        return network
    return Denoiser(network, param, gamma_min, gamma_max, pre_func, post_func)
