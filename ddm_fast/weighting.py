"""Loss weightings lambda(gamma) over the log-SNR (docs/math.md,
"Weightings")."""
from __future__ import annotations

import math
from typing import Union

import torch

from ._validation import check_finite_number, check_float_tensor

__all__ = [
    "SigmoidWeighting",
    "ExponentialWeighting",
    "ELBOWeighting",
    "EDMWeighting",
    "get_weighting",
]


class SigmoidWeighting(torch.nn.Module):
    """sigmoid(shift - gamma) (Kingma & Gao 2023), shift b = 2 by default."""

    def __init__(self, shift: float = 2.):
        super().__init__()
        self.shift = check_finite_number("shift", shift)

    def forward(self, gamma: torch.Tensor) -> torch.Tensor:
        check_float_tensor("gamma", gamma)
        return torch.sigmoid(self.shift - gamma)


class ExponentialWeighting(torch.nn.Module):
    """exp(-multiplier * gamma - shift)."""

    def __init__(self, multiplier: float = 0.5, shift: float = 0.):
        super().__init__()
        self.multiplier = check_finite_number("multiplier", multiplier)
        self.shift = check_finite_number("shift", shift)

    def forward(self, gamma: torch.Tensor) -> torch.Tensor:
        check_float_tensor("gamma", gamma)
        return torch.exp(-gamma * self.multiplier - self.shift)


class ELBOWeighting(torch.nn.Module):
    """Constant 1: the loss is the ELBO (up to the density; docs/math.md,
    "The diffusion loss")."""

    def forward(self, gamma: torch.Tensor) -> torch.Tensor:
        check_float_tensor("gamma", gamma)
        return torch.ones_like(gamma)


class EDMWeighting(torch.nn.Module):
    """EDM's implied weighting in gamma: N(gamma; mean, scale^2) * (e^-gamma + 0.25)."""

    def __init__(self, mean: float = 2.4, scale: float = 2.4) -> None:
        super().__init__()
        self.mean = check_finite_number("mean", mean)
        self.scale = check_finite_number("scale", scale, "a finite number > 0",
                                         lambda v: v > 0)
        self.constant = -math.log(self.scale) - 0.5 * math.log(2 * math.pi)

    def forward(self, gamma: torch.Tensor) -> torch.Tensor:
        check_float_tensor("gamma", gamma)
        log_pdf = self.constant - (gamma - self.mean) ** 2 / (2 * self.scale ** 2)
        return torch.exp(log_pdf) * (torch.exp(-gamma) + 0.25)


def get_weighting(weighting: Union[None, str, torch.nn.Module]) -> torch.nn.Module:
    """A weighting module from a module, a name or None (ELBO)."""
    if weighting is None:
        return ELBOWeighting()
    if isinstance(weighting, torch.nn.Module):
        return weighting
    names = {"elbo": ELBOWeighting, "sigmoid": SigmoidWeighting,
             "exponential": ExponentialWeighting, "edm": EDMWeighting}
    if isinstance(weighting, str) and weighting.lower() in names:
        return names[weighting.lower()]()
    raise ValueError(f"weighting must be None, a module or one of "
                     f"{sorted(names)}, got {weighting!r}")
