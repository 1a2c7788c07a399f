"""A small circular 1-D convolutional denoiser for Lorenz-96 states.

Input: the noised state z (B, n_grid) and its mask (valid = 1); both enter
as channels, so the network knows which zeros are masked values. The
normalised log-SNR is embedded (sinusoidal features, then an MLP) and
modulates every residual block through FiLM (scale and shift per channel).
Convolutions pad circularly: the Lorenz-96 ring has no boundary.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ddm_fast.layers import SinusoidalEmbedding

__all__ = ["CircularConv1d", "FiLMResBlock", "L96Denoiser"]


class CircularConv1d(torch.nn.Conv1d):
    """Conv1d with circular padding that keeps the length (odd kernels)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=0)
        self.pad = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad, self.pad), mode="circular")
        return super().forward(x)


class FiLMResBlock(torch.nn.Module):
    """x + conv(act(conv(FiLM(norm(x), emb)))), the last conv zero-initialised
    so every block starts as the identity."""

    def __init__(self, channels: int, embedding_dim: int, kernel_size: int = 5):
        super().__init__()
        self.norm = torch.nn.GroupNorm(1, channels, affine=False)
        self.film = torch.nn.Linear(embedding_dim, 2 * channels)
        self.conv1 = CircularConv1d(channels, 2 * channels, kernel_size)
        self.conv2 = CircularConv1d(2 * channels, channels, 1)
        torch.nn.init.zeros_(self.conv2.weight)
        torch.nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(embedding)[..., None].chunk(2, dim=1)
        h = self.norm(x) * (1 + scale) + shift
        h = self.conv2(F.silu(self.conv1(h)))
        return x + h


class L96Denoiser(torch.nn.Module):
    """``forward(z, normalized_gamma, mask=None) -> (B, n_grid)``.

    Parameters: ``channels`` (width), ``n_blocks`` residual blocks,
    ``kernel_size`` of their spatial convolutions, ``embedding_dim`` of the
    log-SNR embedding.
    """

    def __init__(self, channels: int = 64, n_blocks: int = 4,
                 kernel_size: int = 5, embedding_dim: int = 64):
        super().__init__()
        for name, value in (("channels", channels), ("n_blocks", n_blocks),
                            ("kernel_size", kernel_size),
                            ("embedding_dim", embedding_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.embedding = torch.nn.Sequential(
            SinusoidalEmbedding(embedding_dim),
            torch.nn.Linear(embedding_dim, embedding_dim), torch.nn.SiLU(),
            torch.nn.Linear(embedding_dim, embedding_dim), torch.nn.SiLU())
        self.lift = CircularConv1d(2, channels, kernel_size)
        self.blocks = torch.nn.ModuleList(
            FiLMResBlock(channels, embedding_dim, kernel_size)
            for _ in range(n_blocks))
        self.head = torch.nn.Sequential(
            torch.nn.GroupNorm(1, channels), torch.nn.SiLU(),
            CircularConv1d(channels, 1, 1))

    def forward(self, in_tensor: torch.Tensor, normalized_gamma: torch.Tensor,
                mask: Optional[torch.Tensor] = None, **conditioning) -> torch.Tensor:
        if in_tensor.ndim != 2:
            raise ValueError(f"in_tensor must have shape (B, n_grid), got "
                             f"{tuple(in_tensor.shape)}")
        valid = torch.ones_like(in_tensor) if mask is None else \
            (mask != 0).to(in_tensor.dtype).expand_as(in_tensor)
        # The embedding sees gamma on a 0..1000 scale: sinusoidal features of
        # a [0, 1] input would all be nearly linear in it.
        embedding = self.embedding(normalized_gamma.reshape(-1, 1) * 1000.0)
        h = self.lift(torch.stack((in_tensor, valid), dim=1))
        for block in self.blocks:
            h = block(h, embedding)
        return self.head(h).squeeze(1)
