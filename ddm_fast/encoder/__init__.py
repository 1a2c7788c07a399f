"""Encoders: physical data -> latent space of the diffusion model."""
from .combined import CombinedEncoder
from .gaussian import GaussianEncoder
from .neural import NeuralEncoder

__all__ = [
    "CombinedEncoder",
    "GaussianEncoder",
    "NeuralEncoder",
]
