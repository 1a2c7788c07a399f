"""Optimal-transport flow schedule (Kingma & Gao 2023, eq. 63)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .noise_scheduler import NoiseScheduler

__all__ = ["FlowOTScheduler"]


class FlowOTScheduler(NoiseScheduler):
    """gamma = 2 log((1 - t~) / t~), truncated to [gamma_min, gamma_max];
    p(gamma) proportional to 1 / (8 cosh^2(gamma / 4)) (docs/math.md,
    "Schedulers").

    T(gamma) = sigmoid(-gamma / 2) and 1 - T = sigmoid(gamma / 2); the
    inverse is 2 (log(1 - t~) - log t~) with both factors carried exactly,
    so neither end of the range loses precision.
    """

    def _time_pair(self, gamma: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        return torch.sigmoid(-0.5 * gamma), torch.sigmoid(0.5 * gamma)

    def _gamma_from_pair(self, time: torch.Tensor,
                         complement: torch.Tensor) -> torch.Tensor:
        return 2 * (torch.log(complement) - torch.log(time))

    def _time_derivative(self, gamma: torch.Tensor) -> torch.Tensor:
        # sigmoid(g/2) sigmoid(-g/2) / 2 = 1 / (8 cosh^2(g/4)), through
        # log-sigmoid so it neither overflows nor cancels for large |gamma|.
        return 0.5 * torch.exp(F.logsigmoid(0.5 * gamma) +
                               F.logsigmoid(-0.5 * gamma))
