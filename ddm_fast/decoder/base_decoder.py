"""Decoder interface and the shared location-scale decoder.

A decoder maps a latent tensor (and, for increments, a first guess) to the
physical state. The location-scale decoders (Gaussian, Laplace) predict a
location with ``prediction_func`` and carry an error ``scale`` buffer learnt
by an exponential moving average; stochastic decoding adds noise of that
scale.
"""
from __future__ import annotations

import numbers
from math import inf
from typing import Callable, List, Optional, Tuple, Union

import torch

from .._compat import warn_ignored_kwargs
from .._validation import check_float_tensor, check_mask, check_same_shapes
from ..encoder.gaussian import (channel_parameter, channel_view,
                                check_channel_counts, check_finite_values,
                                load_channel_buffers, zero_masked)
from ..utils import masked_average
from .prediction_funcs import delta_prediction

__all__ = ["BaseDecoder", "LocationScaleDecoder"]


class BaseDecoder(torch.nn.Module):
    """Interface of every decoder.

    ``n_dims``: latent channels the decoder consumes inside a
    :class:`CombinedDecoder`; ``n_physical_dims``: channels it outputs (and
    of its first guess and target), by default ``n_dims``.
    Setting ``stochastic`` propagates to the decoders it wraps.
    """
    n_dims = 0

    def __init__(self, stochastic: bool = False):
        super().__init__()
        self.stochastic = stochastic

    @property
    def stochastic(self) -> bool:
        return self._stochastic

    @stochastic.setter
    def stochastic(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"stochastic must be a bool, got {type(value).__name__}")
        self._stochastic = value
        for child in self._wrapped_decoders():
            child.stochastic = value

    def _wrapped_decoders(self) -> List["BaseDecoder"]:
        return []

    @property
    def n_physical_dims(self) -> int:
        return self.n_dims

    def forward(self, in_tensor: torch.Tensor,
                first_guess: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def update(self, in_tensor: torch.Tensor,
               first_guess: Optional[torch.Tensor],
               target: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> None:
        raise NotImplementedError

    def loss(self, in_tensor: torch.Tensor,
             first_guess: Optional[torch.Tensor],
             target: torch.Tensor,
             mask: Optional[torch.Tensor] = None
             ) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def _check_bound(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if value != value:
        raise ValueError(f"{name} must not be NaN")
    return value


class LocationScaleDecoder(BaseDecoder):
    """Common body of :class:`GaussianDecoder` and :class:`LaplaceDecoder`.

    prediction = prediction_func(self, in_tensor, first_guess) is the
    location; ``scale`` (buffer, shape (K,)) the error scale, initialised to
    ``std``. forward: location (+ noise of ``scale`` if stochastic), clamped
    to [lower_bound, upper_bound], then masked positions set to 0.
    Subclasses define the noise, the NLL and the scale statistic.

    State: as in ddm_dynamical, only ``scale`` is saved; ``mean`` and
    ``std`` are configuration (non-persistent buffers). A toolbox
    ``scale`` of another shape holding K values (its (K, 1, 1) from a
    per-channel ``std``) is reshaped on loading, and the earlier ddm_fast
    layout that also saved ``mean`` and ``std`` still loads strictly.
    """
    n_dims = 1

    def __init__(self, mean: Union[float, torch.Tensor] = 0.,
                 std: Union[float, torch.Tensor] = 1.,
                 lower_bound: float = -inf, upper_bound: float = inf,
                 ema_rate: float = 1., stochastic: bool = False,
                 prediction_func: Callable = delta_prediction, **kwargs):
        super().__init__(stochastic=stochastic)
        mean = check_finite_values("mean", channel_parameter("mean", mean))
        std = check_finite_values("std", channel_parameter("std", std))
        self.n_dims = check_channel_counts(("mean", "std"), (mean, std))
        if not bool((std > 0).all()):
            raise ValueError("std must be > 0 everywhere")
        self.lower_bound = _check_bound("lower_bound", lower_bound)
        self.upper_bound = _check_bound("upper_bound", upper_bound)
        if self.lower_bound > self.upper_bound:
            raise ValueError(f"lower_bound ({self.lower_bound}) must not exceed "
                             f"upper_bound ({self.upper_bound})")
        ema_rate = _check_bound("ema_rate", ema_rate)
        if not 0. <= ema_rate <= 1.:
            raise ValueError(f"ema_rate must lie in [0, 1], got {ema_rate}")
        self.ema_rate = ema_rate
        if not callable(prediction_func):
            raise TypeError("prediction_func must be callable as "
                            "func(decoder, in_tensor, first_guess)")
        self.prediction_func = prediction_func
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.register_buffer(
            "scale", std.expand(self.n_dims).clone())
        # The toolbox accepted and ignored extra keywords (configuration
        # files pass them); say so instead of dropping them silently.
        warn_ignored_kwargs(self, kwargs)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        load_channel_buffers(self, ("mean", "std"), state_dict, prefix,
                             error_msgs)
        scale = state_dict.get(prefix + "scale")
        if isinstance(scale, torch.Tensor) and \
                scale.shape != self.scale.shape and \
                scale.numel() == self.scale.numel():
            # ddm_dynamical saved torch.ones(1) * std: (K, 1, 1) for a
            # per-channel std given as (K, 1, 1).
            state_dict[prefix + "scale"] = scale.reshape(self.scale.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # -- hooks of the concrete distributions
    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        """Unit-scale noise of the decoder's distribution, shaped like ``like``."""
        raise NotImplementedError

    def _error_statistic(self, error: torch.Tensor) -> torch.Tensor:
        """Elementwise statistic averaged into the scale update."""
        raise NotImplementedError

    def _ema_scale(self, statistic: torch.Tensor) -> torch.Tensor:
        """New scale from the masked-mean statistic."""
        raise NotImplementedError

    def _nll(self, error: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Elementwise negative log-likelihood of ``error`` = target - location."""
        raise NotImplementedError

    # -- shared logic
    def to_prediction(self, in_tensor: torch.Tensor,
                      first_guess: Optional[torch.Tensor] = None
                      ) -> torch.Tensor:
        check_float_tensor("in_tensor", in_tensor, min_ndim=1)
        return self.prediction_func(self, in_tensor, first_guess)

    def _scale_view(self, like: torch.Tensor) -> torch.Tensor:
        # A copy: ``update`` rewrites the buffer in place, which must not
        # invalidate graphs built from an earlier forward or loss.
        return channel_view(self.scale, like, "scale").to(like.dtype).clone()

    def forward(self, in_tensor: torch.Tensor,
                first_guess: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        prediction = self.to_prediction(in_tensor, first_guess)
        check_mask(mask, prediction, like_name="the decoded state")
        if self.stochastic:
            # Out of place: the prediction may alias the input.
            prediction = prediction + self._noise(prediction) * \
                self._scale_view(prediction)
        if self.lower_bound > -inf or self.upper_bound < inf:
            prediction = prediction.clamp(min=self.lower_bound,
                                          max=self.upper_bound)
        return zero_masked(prediction, mask)

    def _masked_error(self, in_tensor, first_guess, target, mask):
        prediction = self.to_prediction(in_tensor, first_guess)
        check_float_tensor("target", target)
        check_same_shapes(["the prediction", "target"], [prediction, target])
        check_mask(mask, prediction, like_name="the decoded state")
        # Zero the error under the mask before any square or abs, so a NaN
        # target there gives neither a NaN loss nor a NaN gradient.
        return zero_masked(target - prediction, mask)

    @torch.no_grad()
    def update(self, in_tensor: torch.Tensor,
               first_guess: Optional[torch.Tensor],
               target: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> None:
        """EMA update of ``scale`` from the masked error statistic, in place
        (no host synchronisation). Per channel when the decoder has K > 1.

        Non-finite errors (a NaN or inf target or prediction outside the
        mask) are left out of the statistic like masked positions; a channel
        without any finite, unmasked error keeps its scale. One NaN would
        otherwise make the scale NaN for good."""
        error = self._masked_error(in_tensor, first_guess, target, mask)
        valid = torch.isfinite(error)
        if mask is not None:
            valid = valid & (mask != 0)
        error = torch.where(valid, error, error.new_zeros(()))
        dims = None if self.n_dims == 1 else \
            [d for d in range(error.ndim) if d != 1]
        statistic = masked_average(self._error_statistic(error), valid,
                                   dim=dims)
        counts = valid.sum(dim=dims) if dims is not None else valid.sum()
        new_scale = self._ema_scale(statistic.to(self.scale.dtype))
        new_scale = torch.where(counts.reshape(-1) > 0,
                                new_scale.reshape(-1), self.scale)
        self.scale.copy_(new_scale.expand(self.n_dims))

    def loss(self, in_tensor: torch.Tensor,
             first_guess: Optional[torch.Tensor],
             target: torch.Tensor,
             mask: Optional[torch.Tensor] = None
             ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(masked mean NLL of the target, masked mean ((decoded - target)/std)²).

        The NLL uses the deterministic location and the current ``scale``; the
        climatological error uses the full forward (noise, clamp, mask).
        """
        error = self._masked_error(in_tensor, first_guess, target, mask)
        nll = masked_average(self._nll(error, self._scale_view(error)), mask)
        decoded = self(in_tensor, first_guess, mask)
        std = channel_view(self.std, decoded, "std").to(decoded.dtype)
        clim_error = zero_masked((decoded - target) / std, mask)
        climatological = masked_average(clim_error.square(), mask)
        return nll, climatological

    def extra_repr(self) -> str:
        return (f"n_dims={self.n_dims}, lower_bound={self.lower_bound}, "
                f"upper_bound={self.upper_bound}, ema_rate={self.ema_rate}, "
                f"stochastic={self.stochastic}, "
                f"prediction_func={getattr(self.prediction_func, '__name__', '?')}")
