"""ddm_dynamical's import path of the base class:
``from ddm_fast.sampler.sampler import BaseSampler``."""
from .base import BaseSampler
from .defaults import (default_postprocessing, default_preprocessing,
                       default_prior_sample)

__all__ = ["BaseSampler", "default_preprocessing", "default_postprocessing",
           "default_prior_sample"]
