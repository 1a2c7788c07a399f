"""Log-SNR helpers shared by the ops layer and the API layer (docs/math.md,
"Conventions"). :mod:`ddm_fast.utils` re-exports them."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["alpha_sigma", "sigma_tilde"]


def alpha_sigma(gamma: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Variance-preserving (alpha, sigma) for a log-SNR ``gamma``.

    alpha^2 = sigmoid(gamma), sigma^2 = sigmoid(-gamma), through log-sigmoid
    so that both stay accurate for |gamma| up to 30 (sqrt(1 - alpha^2) would
    lose sigma entirely for gamma > 17 in float32).
    """
    alpha = torch.exp(0.5 * F.logsigmoid(gamma))
    sigma = torch.exp(0.5 * F.logsigmoid(-gamma))
    return alpha, sigma


def sigma_tilde(gamma: torch.Tensor) -> torch.Tensor:
    """Noise level of the exploding form, sigma/alpha = exp(-gamma/2)."""
    return torch.exp(-0.5 * gamma)
