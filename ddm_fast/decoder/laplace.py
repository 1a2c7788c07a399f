"""Decoder with Laplace errors: target ~ Laplace(prediction, scale)."""
from __future__ import annotations

import math

import torch

from .base_decoder import LocationScaleDecoder

__all__ = ["LaplaceDecoder"]

_LOG_2 = math.log(2.)


class LaplaceDecoder(LocationScaleDecoder):
    """Laplace decoder (see :class:`LocationScaleDecoder`).

    Stochastic decoding adds Laplace(0, scale) noise drawn by the inverse CDF;
    ``update`` does scale <- r scale + (1 - r) masked MAE, r = ``ema_rate``.
    """

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        # u ~ U(-1, 1) and x = -sign(u) log(1 - |u|) is Laplace(0, 1); u is
        # kept off -1, where log1p(-|u|) would be -inf.
        tiny = torch.finfo(like.dtype).eps
        u = (torch.rand_like(like) * 2 - 1).clamp_(min=tiny - 1)
        return -u.sign() * torch.log1p(-u.abs())

    def _error_statistic(self, error: torch.Tensor) -> torch.Tensor:
        return error.abs()

    def _ema_scale(self, statistic: torch.Tensor) -> torch.Tensor:
        return self.ema_rate * self.scale + (1 - self.ema_rate) * statistic

    def _nll(self, error: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return error.abs() / scale + scale.log() + _LOG_2
