"""Every random-number state a training run depends on, as a checkpointable
mapping: torch's CPU (and CUDA) generators, NumPy's and Python's global
ones, and the trainer's own generator."""
from __future__ import annotations

import random
from typing import Any, Dict, Mapping

import numpy as np
import torch

__all__ = ["rng_states", "set_rng_states", "check_rng_states"]

_KEYS = ("torch", "numpy", "python", "trainer")


def rng_states(generator: torch.Generator) -> Dict[str, Any]:
    """The global RNG states and that of ``generator``."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_kind,
                  "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss),
                  "cached_gaussian": float(np_gauss)},
        "python": random.getstate(),
        "trainer": generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def check_rng_states(states: Any) -> None:
    """Raise ``ValueError`` naming what is missing from ``states``."""
    if not isinstance(states, Mapping):
        raise ValueError(f"rng must be a mapping, got {type(states).__name__}")
    missing = [k for k in _KEYS if k not in states]
    if missing:
        raise ValueError(f"rng lacks the states {missing}")


def set_rng_states(states: Mapping[str, Any], generator: torch.Generator) -> None:
    """Restore what :func:`rng_states` returned (into ``generator`` too)."""
    torch.set_rng_state(states["torch"].cpu())
    np_state = states["numpy"]
    np.random.set_state((np_state["kind"],
                         np_state["keys"].cpu().numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"],
                         np_state["cached_gaussian"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    generator.set_state(states["trainer"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])
