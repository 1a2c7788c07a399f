"""A schedule given as an explicit gamma per step."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._validation import check_float_tensor
from .noise_scheduler import NoiseScheduler, _check_finite_number

__all__ = ["PredefinedScheduler"]


class PredefinedScheduler(NoiseScheduler):
    """gamma at equally spaced times: ``time_gammas[k]`` is gamma at
    t_k = k / (n - 1), so forward(linspace(0, 1, n)) returns ``time_gammas``.
    Between the steps gamma is interpolated linearly in t; the density is
    that of the piecewise-linear map (piecewise constant).

    Parameters
    ----------
    time_gammas : 1-D float tensor of n >= 2 strictly decreasing log-SNRs
        (gamma at t = 0 first, the sampler's last step).
    gamma_min, gamma_max : truncation range inside
        [time_gammas[-1], time_gammas[0]]; default (None) its ends, so no
        truncation. ddm_dynamical defaulted to (-15, 10) and ignored them.

    ddm_dynamical's version returned ``time_gammas`` whatever the times (and
    asserted their number); here any t works, so a sampler with another
    number of steps gets the interpolated schedule instead of an error.
    """

    def __init__(self, time_gammas: torch.Tensor,
                 gamma_min: Optional[float] = None,
                 gamma_max: Optional[float] = None, **kwargs):
        check_float_tensor("time_gammas", time_gammas, min_ndim=1)
        if time_gammas.ndim != 1 or time_gammas.numel() < 2:
            raise ValueError(
                "time_gammas must be a 1-D tensor of at least 2 log-SNRs, got "
                f"shape {tuple(time_gammas.shape)}")
        knots = time_gammas.detach().to(torch.float64).cpu()
        if not bool(torch.isfinite(knots).all()):
            raise ValueError("time_gammas must be finite")
        if not bool((knots[1:] < knots[:-1]).all()):
            raise ValueError(
                "time_gammas must be strictly decreasing (gamma at t = 0, the "
                "least noisy step, first), got "
                f"{knots.tolist() if knots.numel() <= 8 else 'a non-decreasing sequence'}")
        lowest, highest = float(knots[-1]), float(knots[0])
        gamma_min = lowest if gamma_min is None else \
            _check_finite_number("gamma_min", gamma_min)
        gamma_max = highest if gamma_max is None else \
            _check_finite_number("gamma_max", gamma_max)
        super().__init__(gamma_min=gamma_min, gamma_max=gamma_max,
                         learnable=False, **kwargs)
        if gamma_min < lowest or gamma_max > highest:
            raise ValueError(
                f"gamma_min={gamma_min} and gamma_max={gamma_max} must lie "
                f"within the range of time_gammas [{lowest}, {highest}]")
        self.register_buffer("time_gammas", time_gammas.detach().clone())

    @property
    def n_steps(self) -> int:
        return self.time_gammas.numel()

    # Times of the knots are k / (n - 1); T is the piecewise-linear inverse.
    def _segment_of_gamma(self, gamma: torch.Tensor, knots: torch.Tensor
                          ) -> torch.Tensor:
        # knots decrease; search in the increasing flipped copy.
        ascending = knots.flip(0).contiguous()
        position = torch.searchsorted(ascending, gamma.contiguous(),
                                      right=True) - 1
        position = position.clamp(0, self.n_steps - 2)
        # segment k of the decreasing knots spans knots[k] >= g >= knots[k+1]
        return self.n_steps - 2 - position

    def _time_pair(self, gamma: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        knots = self.time_gammas.to(gamma.dtype)
        segment = self._segment_of_gamma(gamma, knots)
        upper, lower = knots[segment], knots[segment + 1]
        fraction = (upper - gamma) / (upper - lower)
        intervals = self.n_steps - 1
        time = (segment + fraction) / intervals
        complement = (intervals - 1 - segment + (1 - fraction)) / intervals
        return time, complement

    def _gamma_from_pair(self, time: torch.Tensor,
                         complement: torch.Tensor) -> torch.Tensor:
        knots = self.time_gammas.to(time.dtype)
        intervals = self.n_steps - 1
        knot_times = torch.linspace(0, 1, self.n_steps, dtype=time.dtype,
                                    device=time.device)
        # searchsorted on the very grid linspace(0, 1, n) gives times equal
        # to a knot exactly that knot's gamma.
        segment = (torch.searchsorted(knot_times, time.contiguous(),
                                      right=True) - 1).clamp(0, intervals - 1)
        start = knot_times[segment]
        fraction = (time - start) / (knot_times[segment + 1] - start)
        return knots[segment] + fraction * (knots[segment + 1] - knots[segment])

    def _time_derivative(self, gamma: torch.Tensor) -> torch.Tensor:
        knots = self.time_gammas.to(gamma.dtype)
        segment = self._segment_of_gamma(gamma, knots)
        intervals = self.n_steps - 1
        return 1 / (intervals * (knots[segment] - knots[segment + 1]))

    def extra_repr(self) -> str:
        return f"n_steps={self.n_steps}, " + super().extra_repr()
