"""Neural-network building blocks."""
from .embedding import RandomFourierLayer, SinusoidalEmbedding

__all__ = [
    "RandomFourierLayer",
    "SinusoidalEmbedding",
]
