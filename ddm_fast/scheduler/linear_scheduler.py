"""Linear log-SNR schedule: gamma falls linearly from gamma_max to gamma_min."""
from __future__ import annotations

from typing import Tuple

import torch

from .noise_scheduler import NoiseScheduler

__all__ = ["LinearScheduler"]


class LinearScheduler(NoiseScheduler):
    """gamma(t) = gamma_max - t (gamma_max - gamma_min), uniform density
    1 / (gamma_max - gamma_min) (docs/math.md, "Schedulers").

    Already linear in t, so the truncation is the identity; forward,
    inverse and density are written out directly.
    """

    def _time_pair(self, gamma: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        # T(gamma) = (gamma_max - gamma) / (gamma_max - gamma_min): the
        # truncation is the identity (t0 = 0, t1 = 1).
        gamma_min, gamma_max = self._gamma_bounds(gamma)
        span = gamma_max - gamma_min
        return (gamma_max - gamma) / span, (gamma - gamma_min) / span

    def _gamma_from_pair(self, time: torch.Tensor,
                         complement: torch.Tensor) -> torch.Tensor:
        gamma_min, gamma_max = self._gamma_bounds(time)
        return gamma_max * complement + gamma_min * time

    def _time_derivative(self, gamma: torch.Tensor) -> torch.Tensor:
        gamma_min, gamma_max = self._gamma_bounds(gamma)
        return torch.ones_like(gamma) / (gamma_max - gamma_min)

    def _forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        gamma_min, gamma_max = self._gamma_bounds(timesteps)
        # Weighted form: exact at both ends (t = 0 and t = 1).
        return gamma_max * (1 - timesteps) + gamma_min * timesteps

    def _inverse(self, gamma: torch.Tensor) -> torch.Tensor:
        gamma_min, gamma_max = self._gamma_bounds(gamma)
        return (gamma_max - gamma) / (gamma_max - gamma_min)

    def _density(self, gamma: torch.Tensor) -> torch.Tensor:
        gamma_min, gamma_max = self._gamma_bounds(gamma)
        return torch.ones_like(gamma) / (gamma_max - gamma_min)
