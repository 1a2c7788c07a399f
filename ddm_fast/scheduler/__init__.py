"""Noise schedulers: maps from pseudo-time t in [0, 1] to log-SNR gamma.

Every scheduler is truncated to [gamma_min, gamma_max] with gamma(0) =
gamma_max and gamma(1) = gamma_min, and exposes ``forward(t)``,
``inverse(gamma)``, ``get_density(gamma)`` (|dt/dgamma|, integrating to 1
over the range) and ``update(gamma, target)`` (adaptive schedulers only).
"""
from .binarized_scheduler import BinarizedScheduler
from .cosine_scheduler import CosineScheduler
from .edm_sampling import EDMSamplingScheduler
from .edm_training import EDMTrainingScheduler
from .flow_ot import FlowOTScheduler
from .linear_scheduler import LinearScheduler
from .noise_scheduler import NoiseScheduler
from .predefined_scheduler import PredefinedScheduler

__all__ = [
    "NoiseScheduler",
    "BinarizedScheduler",
    "CosineScheduler",
    "EDMTrainingScheduler",
    "EDMSamplingScheduler",
    "FlowOTScheduler",
    "LinearScheduler",
    "PredefinedScheduler",
]
