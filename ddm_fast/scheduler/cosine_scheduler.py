"""Shifted cosine schedule (Nichol & Dhariwal 2021; Hoogeboom et al. 2023)."""
from __future__ import annotations

import math
from typing import Tuple

import torch

from .noise_scheduler import NoiseScheduler, _check_finite_number

__all__ = ["CosineScheduler"]


class CosineScheduler(NoiseScheduler):
    """gamma = -2 log tan(pi t~ / 2) + 2 shift, truncated to
    [gamma_min, gamma_max]; p(gamma) proportional to
    1 / (2 pi cosh(gamma / 2 - shift)) (docs/math.md, "Schedulers").

    T(gamma) = (2/pi) arctan(exp(-gamma/2 + shift)) and, since
    arctan(x) + arctan(1/x) = pi/2, 1 - T = (2/pi) arctan(exp(gamma/2 - shift)).
    The inverse uses tan(pi t~/2) = sin(pi t~/2) / sin(pi (1 - t~)/2), which
    stays accurate at both ends where tan itself over- or underflows.
    """

    def __init__(self, shift: float = 0., gamma_min: float = -10.,
                 gamma_max: float = 10., learnable: bool = False, **kwargs):
        super().__init__(gamma_min=gamma_min, gamma_max=gamma_max,
                         learnable=learnable, **kwargs)
        self.shift = _check_finite_number("shift", shift)

    def _time_pair(self, gamma: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        # arctan(e^x) = atan2(e^{x/2}, e^{-x/2}): finite (and with finite
        # gradients) for |x| far beyond where e^x overflows.
        half_arg = 0.25 * gamma - 0.5 * self.shift
        up, down = torch.exp(half_arg), torch.exp(-half_arg)
        return (2 / math.pi) * torch.atan2(down, up), \
            (2 / math.pi) * torch.atan2(up, down)

    def _gamma_from_pair(self, time: torch.Tensor,
                         complement: torch.Tensor) -> torch.Tensor:
        log_tan = torch.log(torch.sin(0.5 * math.pi * time)) - \
            torch.log(torch.sin(0.5 * math.pi * complement))
        return 2 * self.shift - 2 * log_tan

    def _time_derivative(self, gamma: torch.Tensor) -> torch.Tensor:
        # 1 / (2 pi cosh x) = e^{-|x|} / (pi (1 + e^{-2|x|})): no overflow.
        decay = torch.exp(-torch.abs(0.5 * gamma - self.shift))
        return decay / (math.pi * (1 + decay * decay))

    def extra_repr(self) -> str:
        return f"shift={self.shift:g}, " + super().extra_repr()
