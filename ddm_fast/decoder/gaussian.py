"""Decoder with Gaussian errors: target ~ N(prediction, scale²)."""
from __future__ import annotations

import math

import torch

from .base_decoder import LocationScaleDecoder

__all__ = ["GaussianDecoder"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class GaussianDecoder(LocationScaleDecoder):
    """Gaussian decoder (see :class:`LocationScaleDecoder`).

    Stochastic decoding adds N(0, scale²) noise; ``update`` does
    scale² <- r scale² + (1 - r) masked MSE, r = ``ema_rate``.
    """

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(like)

    def _error_statistic(self, error: torch.Tensor) -> torch.Tensor:
        return error.square()

    def _ema_scale(self, statistic: torch.Tensor) -> torch.Tensor:
        variance = self.ema_rate * self.scale.square() + \
            (1 - self.ema_rate) * statistic
        return variance.sqrt()

    def _nll(self, error: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return 0.5 * (error / scale).square() + scale.log() + _HALF_LOG_2PI
