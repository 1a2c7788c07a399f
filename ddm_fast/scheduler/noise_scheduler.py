"""The base noise scheduler: a map from pseudo-time t to log-SNR gamma.

Every scheduler is defined by a monotonically decreasing *untruncated* map
T: gamma -> t~ (its "time", usually in [0, 1]) and is truncated to
[gamma_min, gamma_max] (docs/math.md, "Truncation and renormalisation"):

    t~ = t0 + t * (t1 - t0),   t0 = T(gamma_max),  t1 = T(gamma_min),
    gamma(t) = T^{-1}(t~),     p(gamma) = |T'(gamma)| / (t1 - t0),

so that gamma(0) = gamma_max, gamma(1) = gamma_min and p integrates to 1 over
[gamma_min, gamma_max]. A subclass supplies T together with its complement
1 - T (``_time_pair``), T^{-1} from that pair (``_gamma_from_pair``) and
|T'| (``_time_derivative``). Carrying the complement lets a scheduler whose
time saturates at 0 or 1 (cosine, flow, the Gaussian CDF) keep full relative
precision at both ends: near t~ = 1 it works with the small number 1 - t~,
never with a rounded 1 - t~.

Everything is computed in the dtype of the input (float64 in, float64 out;
float16 and bfloat16 are computed in float32 and returned in their own
dtype, as several special functions have no half-precision kernels) and
stays differentiable with respect to ``gamma_min`` and ``gamma_max``, which
are ``torch.nn.Parameter``s (trainable when ``learnable``).

ddm_dynamical's names for the same quantities are kept as public methods:
``inverse_scheduler`` (the untruncated T), ``get_time_shift`` (t0),
``get_time_scale`` (t1 - t0) and ``truncate_time`` (t -> t~).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .._compat import warn_ignored_kwargs
from .._validation import check_float_tensor, check_gamma_range

__all__ = ["NoiseScheduler"]


def _check_finite_number(name: str, value) -> float:
    """A finite real number (Python number or one-element tensor)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got bool")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor "
                             f"of shape {tuple(value.shape)}")
        value = float(value.detach())
    if not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got "
                        f"{type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


class NoiseScheduler(torch.nn.Module):
    """Base class of the truncated schedulers t -> gamma (see module doc).

    Parameters
    ----------
    gamma_min, gamma_max : the log-SNR range, gamma(1) = gamma_min and
        gamma(0) = gamma_max; finite, gamma_min < gamma_max.
    learnable : whether gamma_min and gamma_max receive gradients.
    **kwargs : accepted and ignored (with a warning naming them), as
        configuration files written for ddm_dynamical may pass extra keys.
    """

    def __init__(self, gamma_min: float = -10., gamma_max: float = 10.,
                 learnable: bool = False, **kwargs):
        super().__init__()
        warn_ignored_kwargs(self, kwargs)
        gamma_min = _check_finite_number("gamma_min", gamma_min)
        gamma_max = _check_finite_number("gamma_max", gamma_max)
        check_gamma_range(gamma_min, gamma_max)
        if not isinstance(learnable, bool):
            raise TypeError(f"learnable must be a bool, got "
                            f"{type(learnable).__name__}")
        dtype = torch.get_default_dtype()
        self.gamma_min = torch.nn.Parameter(
            torch.tensor(gamma_min, dtype=dtype), requires_grad=learnable)
        self.gamma_max = torch.nn.Parameter(
            torch.tensor(gamma_max, dtype=dtype), requires_grad=learnable)

    # ------------------------------------------------ subclass interface
    def _time_pair(self, gamma: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(T(gamma), 1 - T(gamma)), each computed accurately."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement _time_pair")

    def _gamma_from_pair(self, time: torch.Tensor,
                         complement: torch.Tensor) -> torch.Tensor:
        """T^{-1}(time), given also complement = 1 - time."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement _gamma_from_pair")

    def _time_derivative(self, gamma: torch.Tensor) -> torch.Tensor:
        """|dT/dgamma| (unnormalised density)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement _time_derivative")

    # ------------------------------------------------------- truncation
    def _check_input(self, name: str, value) -> torch.Tensor:
        check_float_tensor(name, value)
        if value.device != self.gamma_min.device:
            raise ValueError(
                f"{name} is on {value.device} but the scheduler's parameters "
                f"are on {self.gamma_min.device}; move one of them")
        return value

    def _check_times(self, timesteps) -> torch.Tensor:
        """``timesteps`` checked to lie in [0, 1] (NaN rejected): outside,
        every schedule would extrapolate to a NaN or a gamma beyond its
        range. The check reads a reduction on the host, so it runs for
        tensors off the GPU only: on CUDA the schedulers never synchronise
        (a training step would stall on every call), and invalid times there
        give NaN or out-of-range gammas instead of an error."""
        timesteps = self._check_input("timesteps", timesteps)
        if not timesteps.is_cuda and timesteps.numel() > 0:
            outside = ~((timesteps >= 0) & (timesteps <= 1))  # NaN: outside
            if bool(outside.any()):
                bad = timesteps[outside].flatten()[:3].tolist()
                raise ValueError(
                    "timesteps must lie in [0, 1] (pseudo-time, 0 = least "
                    f"noisy), got {int(outside.sum())} value(s) outside, "
                    f"e.g. {bad}")
        return timesteps

    @staticmethod
    def _compute_dtype(value: torch.Tensor) -> torch.dtype:
        """float16/bfloat16 are computed in float32 (no half kernels for
        ndtri, erfc, ...; and their 8-11 bit mantissa would round the
        truncation constants)."""
        return torch.float32 if value.dtype in (torch.float16,
                                                torch.bfloat16) \
            else value.dtype

    def _gamma_bounds(self, like: torch.Tensor
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(gamma_min, gamma_max) in the dtype of ``like`` (differentiable)."""
        return self.gamma_min.to(like.dtype), self.gamma_max.to(like.dtype)

    def _truncation(self, like: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t0, 1 - t1, t1 - t0) of the truncated range."""
        gamma_min, gamma_max = self._gamma_bounds(like)
        t0, one_minus_t0 = self._time_pair(gamma_max)
        t1, one_minus_t1 = self._time_pair(gamma_min)
        # The span from whichever pair does not cancel: both times small ->
        # t1 - t0, both close to 1 -> (1 - t0) - (1 - t1).
        span = torch.where(t0 + t1 <= 1, t1 - t0, one_minus_t0 - one_minus_t1)
        return t0, one_minus_t1, span

    # ------------------------------------------------ computed in a dtype
    def _forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """gamma(t) on checked times in a computable dtype."""
        t0, one_minus_t1, span = self._truncation(timesteps)
        # Form the smaller of t~ and 1 - t~ directly, the other by
        # subtraction, so neither end loses relative precision.
        time_from_start = t0 + timesteps * span
        complement_from_end = one_minus_t1 + (1 - timesteps) * span
        first_half = time_from_start <= 0.5
        time = torch.where(first_half, time_from_start,
                           1 - complement_from_end)
        complement = torch.where(first_half, 1 - time_from_start,
                                 complement_from_end)
        return self._gamma_from_pair(time, complement)

    def _inverse(self, gamma: torch.Tensor) -> torch.Tensor:
        t0, one_minus_t1, span = self._truncation(gamma)
        time, complement = self._time_pair(gamma)
        return torch.where(time <= 0.5, (time - t0) / span,
                           1 - (complement - one_minus_t1) / span)

    def _density(self, gamma: torch.Tensor) -> torch.Tensor:
        _, _, span = self._truncation(gamma)
        return self._time_derivative(gamma) / span

    def _in_compute_dtype(self, function, value: torch.Tensor
                          ) -> torch.Tensor:
        dtype = self._compute_dtype(value)
        if dtype == value.dtype:
            return function(value)
        return function(value.to(dtype)).to(value.dtype)

    # ----------------------------------------------------------- public
    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """gamma(t) for pseudo-times t in [0, 1] (any shape, same shape out,
        in the dtype of ``timesteps``). Times outside [0, 1] or NaN raise a
        ValueError."""
        return self._in_compute_dtype(self._forward,
                                      self._check_times(timesteps))

    def inverse(self, gamma: torch.Tensor) -> torch.Tensor:
        """t(gamma), the inverse of :meth:`forward`: inverse(forward(t)) = t."""
        return self._in_compute_dtype(self._inverse,
                                      self._check_input("gamma", gamma))

    def get_density(self, gamma: torch.Tensor) -> torch.Tensor:
        """p(gamma) = |dt/dgamma|, integrating to 1 over
        [gamma_min, gamma_max] (docs/math.md,
        "Truncation and renormalisation")."""
        return self._in_compute_dtype(self._density,
                                      self._check_input("gamma", gamma))

    # -------------------------------------- ddm_dynamical's names (public)
    def _as_gamma(self, gamma) -> torch.Tensor:
        """A number or tensor as a float tensor on the scheduler's device."""
        if not isinstance(gamma, torch.Tensor):
            gamma = torch.as_tensor(_check_finite_number("gamma", gamma),
                                    dtype=self.gamma_min.dtype,
                                    device=self.gamma_min.device)
        return self._check_input("gamma", gamma)

    def inverse_scheduler(self, gamma) -> torch.Tensor:
        """The untruncated time T(gamma) (ddm_dynamical's name): t~ = 0 at
        gamma = +inf, 1 at -inf. ``gamma`` a number or a float tensor."""
        gamma = self._as_gamma(gamma)
        return self._in_compute_dtype(lambda g: self._time_pair(g)[0], gamma)

    def get_time_shift(self) -> torch.Tensor:
        """t0 = T(gamma_max), the untruncated time at t = 0."""
        return self.inverse_scheduler(self.gamma_max)

    def get_time_scale(self) -> torch.Tensor:
        """t1 - t0 = T(gamma_min) - T(gamma_max), the span of untruncated
        time that t in [0, 1] covers."""
        return self._truncation(self.gamma_min)[2]

    def truncate_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        """t~ = t0 + t (t1 - t0), the untruncated time of t in [0, 1]."""
        def truncate(time: torch.Tensor) -> torch.Tensor:
            t0, _, span = self._truncation(time)
            return t0 + time * span
        return self._in_compute_dtype(truncate, self._check_times(timesteps))

    def update(self, gamma: torch.Tensor, target: torch.Tensor,
               process_group: Optional[object] = None) -> None:
        """Learn from per-sample statistics ``target`` at ``gamma``; a no-op
        except for adaptive schedulers (:class:`BinarizedScheduler`)."""
        check_float_tensor("gamma", gamma)
        check_float_tensor("target", target)
        if gamma.shape != target.shape:
            raise ValueError(
                f"target must have the shape of gamma {tuple(gamma.shape)}, "
                f"got {tuple(target.shape)}")

    def extra_repr(self) -> str:
        return (f"gamma_min={float(self.gamma_min.detach()):g}, "
                f"gamma_max={float(self.gamma_max.detach()):g}, "
                f"learnable={self.gamma_min.requires_grad}")
