"""Decoders: latent space of the diffusion model -> physical state."""
from .base_decoder import BaseDecoder, LocationScaleDecoder
from .combined import CombinedDecoder
from .gaussian import GaussianDecoder
from .laplace import LaplaceDecoder
from .neural import NeuralDecoder
from .prediction_funcs import delta_prediction, state_prediction

__all__ = [
    "BaseDecoder",
    "CombinedDecoder",
    "GaussianDecoder",
    "LaplaceDecoder",
    "LocationScaleDecoder",
    "NeuralDecoder",
    "delta_prediction",
    "state_prediction",
]
