"""Embeddings of scalars (noise level, time) and of coordinates."""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

from .._compat import warn_ignored_kwargs
from .._validation import check_float_tensor, check_positive_int

__all__ = ["SinusoidalEmbedding", "RandomFourierLayer"]


def _check_positive_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


class SinusoidalEmbedding(torch.nn.Module):
    """Transformer-style embedding of one scalar per sample.

    frequencies_k = max_freq^(-k / (dim/2 - 1)) / scale, k = 0 .. dim/2 - 1;
    output = [sin(x f), cos(x f)] along the last dimension: input (B,) gives
    (B, dim); an input whose last dimension is 1, (B, 1) or (B, 1, 1, 1) say,
    gives its shape with that 1 replaced by dim (ddm_dynamical broadcast the
    same way, so a gamma kept as (B, 1, 1, 1) embeds to (B, 1, 1, dim)).
    ``dim`` must be even and >= 4 (the exponent divides by dim/2 - 1).
    Extra keyword arguments are accepted and ignored, with a warning.
    """

    def __init__(self, dim: int = 512, scale: float = 1.,
                 max_freq: float = 10000, **kwargs):
        super().__init__()
        warn_ignored_kwargs(self, kwargs)
        check_positive_int("dim", dim, minimum=4)
        if dim % 2:
            raise ValueError(f"dim must be even (half sines, half cosines), got {dim}")
        scale = _check_positive_real("scale", scale)
        max_freq = _check_positive_real("max_freq", max_freq)
        half_dim = dim // 2
        log_step = math.log(max_freq) / (half_dim - 1)
        self.dim = dim
        self.register_buffer(
            "frequencies",
            torch.exp(torch.arange(half_dim, dtype=torch.float64) * -log_step
                      ).div(scale).to(torch.float32))

    def forward(self, in_tensor: torch.Tensor) -> torch.Tensor:
        check_float_tensor("in_tensor", in_tensor, min_ndim=1)
        if in_tensor.ndim == 1:
            in_tensor = in_tensor[:, None]
        elif in_tensor.shape[-1] != 1:
            raise ValueError(
                "in_tensor must have shape (B,) or a last dimension of size "
                f"1, e.g. (B, 1) or (B, 1, 1, 1); got {tuple(in_tensor.shape)}")
        phase = in_tensor * self.frequencies.to(in_tensor.dtype)
        return torch.cat((phase.sin(), phase.cos()), dim=-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class RandomFourierLayer(torch.nn.Module):
    """Random Fourier features (Tancik et al., 2020) of ``in_features``
    coordinates: sqrt(2/n) [sin(2π x W / λ), cos(2π x W / λ)], W ~ N(0, 1)
    of shape (in_features, n_neurons/2), frozen (a parameter without
    gradient, so toolbox checkpoints load). Input (..., in_features), or
    (B,) when in_features is 1; output (..., n_neurons).
    """

    def __init__(self, in_features: int = 3, n_neurons: int = 512,
                 wave_length: float = 1.,
                 generator: Optional[torch.Generator] = None,
                 **kwargs) -> None:
        super().__init__()
        warn_ignored_kwargs(self, kwargs)
        check_positive_int("in_features", in_features)
        check_positive_int("n_neurons", n_neurons, minimum=2)
        if n_neurons % 2:
            raise ValueError(f"n_neurons must be even (half sines, half "
                             f"cosines), got {n_neurons}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got "
                            f"{type(generator).__name__}")
        self.wave_length = _check_positive_real("wave_length", wave_length)
        self.in_features = in_features
        self.n_neurons = n_neurons
        device = generator.device if generator is not None else None
        weights = torch.randn(in_features, n_neurons // 2, generator=generator,
                              device=device)
        self.weights = torch.nn.Parameter(weights.cpu(), requires_grad=False)
        self.constant = math.sqrt(2 / n_neurons)

    def extract_features(self, in_tensor: torch.Tensor) -> torch.Tensor:
        return self(in_tensor)

    def forward(self, in_tensor: torch.Tensor) -> torch.Tensor:
        check_float_tensor("in_tensor", in_tensor, min_ndim=1)
        if in_tensor.ndim == 1 and self.in_features == 1:
            in_tensor = in_tensor[:, None]
        if in_tensor.shape[-1] != self.in_features:
            raise ValueError(f"in_tensor must end in in_features="
                             f"{self.in_features} coordinates, got shape "
                             f"{tuple(in_tensor.shape)}")
        phase = (2 * math.pi / self.wave_length) * (
            in_tensor @ self.weights.to(in_tensor.dtype))
        return self.constant * torch.cat((phase.sin(), phase.cos()), dim=-1)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, n_neurons={self.n_neurons}, "
                f"wave_length={self.wave_length}")
