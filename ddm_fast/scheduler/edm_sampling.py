"""EDM sampling schedule: Karras et al. (2022)'s rho-schedule."""
from __future__ import annotations

from typing import Tuple

import torch

from .noise_scheduler import NoiseScheduler, _check_finite_number

__all__ = ["EDMSamplingScheduler"]


class EDMSamplingScheduler(NoiseScheduler):
    """sigma~(t~) = (sigma_max^{1/rho} + (1 - t~)(sigma_min^{1/rho} -
    sigma_max^{1/rho}))^rho, gamma = -2 log sigma~, truncated to
    [gamma_min, gamma_max] (docs/math.md, "Schedulers").

    sigma~^{1/rho} is linear in t~ and the truncation is linear in t, so the
    truncated schedule is exactly the rho-schedule running from
    sigma~ = exp(-gamma_max / 2) at t = 0 to exp(-gamma_min / 2) at t = 1:
    ``sigma_min`` and ``sigma_max`` drop out once truncated (they are kept for
    the toolbox's signature). Pass gamma_max = -2 log(0.002) and
    gamma_min = -2 log(80) for EDM's own range.
    """

    def __init__(self, rho: float = 7., sigma_min: float = 0.002,
                 sigma_max: float = 80., gamma_min: float = -10.,
                 gamma_max: float = 10., learnable: bool = False, **kwargs):
        super().__init__(gamma_min=gamma_min, gamma_max=gamma_max,
                         learnable=learnable, **kwargs)
        self.rho = _check_finite_number("rho", rho)
        self.sigma_min = _check_finite_number("sigma_min", sigma_min)
        self.sigma_max = _check_finite_number("sigma_max", sigma_max)
        if self.rho <= 0:
            raise ValueError(f"rho must be positive, got {self.rho}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                "sigma_min and sigma_max must satisfy 0 < sigma_min < "
                f"sigma_max, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}")
        self.inv_rho = 1 / self.rho
        # u = sigma~^{1/rho} = root_max * t~ + root_min * (1 - t~)
        self._root_min = self.sigma_min ** self.inv_rho
        self._root_max = self.sigma_max ** self.inv_rho

    def _time_pair(self, gamma: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        root = torch.exp(-0.5 * self.inv_rho * gamma)
        root_span = self._root_max - self._root_min
        return (root - self._root_min) / root_span, \
            (self._root_max - root) / root_span

    def _gamma_from_pair(self, time: torch.Tensor,
                         complement: torch.Tensor) -> torch.Tensor:
        root = self._root_max * time + self._root_min * complement
        return -2 * self.rho * torch.log(root)

    def _time_derivative(self, gamma: torch.Tensor) -> torch.Tensor:
        root = torch.exp(-0.5 * self.inv_rho * gamma)
        return root / (2 * self.rho * (self._root_max - self._root_min))

    def extra_repr(self) -> str:
        return (f"rho={self.rho:g}, sigma_min={self.sigma_min:g}, "
                f"sigma_max={self.sigma_max:g}, " + super().extra_repr())
