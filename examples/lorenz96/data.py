"""Lorenz-96 trajectories: an RK4 integrator vectorised over an ensemble,
generation with spin-up, and a disk cache keyed by the parameters.

dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F on a circle of n_grid
variables (Lorenz 1996). With F = 8 and 40 variables the system is chaotic
with a climatological mean of about 2.3 and standard deviation of about 3.6.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Dict

import numpy as np

__all__ = ["L96Config", "lorenz96_tendency", "rk4_step", "integrate",
           "generate_trajectories", "load_or_generate"]


@dataclass(frozen=True)
class L96Config:
    """Everything that determines a generated data set (the cache key)."""
    forcing: float = 8.0
    n_grid: int = 40
    dt: float = 0.05
    n_spinup: int = 500          # steps discarded (25 model time units)
    train_members: int = 32      # independent trajectories for training
    train_steps: int = 1500
    val_members: int = 4
    val_steps: int = 500
    test_members: int = 16       # independent trajectories for evaluation
    test_steps: int = 1000
    subsample: int = 2           # keep every k-th state (less redundancy)
    seed: int = 42

    def __post_init__(self):
        for name in ("n_grid", "train_members", "train_steps", "val_members",
                     "val_steps", "test_members", "test_steps", "subsample"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_grid < 4:
            raise ValueError(f"n_grid must be >= 4, got {self.n_grid}")
        if not isinstance(self.n_spinup, int) or self.n_spinup < 0:
            raise ValueError(f"n_spinup must be a non-negative int, got {self.n_spinup!r}")
        if not self.dt > 0:
            raise ValueError(f"dt must be > 0, got {self.dt}")


def lorenz96_tendency(state: np.ndarray, forcing: float) -> np.ndarray:
    """dx/dt for states (..., n_grid), periodic in the last axis."""
    return ((np.roll(state, -1, axis=-1) - np.roll(state, 2, axis=-1))
            * np.roll(state, 1, axis=-1) - state + forcing)


def rk4_step(state: np.ndarray, dt: float, forcing: float) -> np.ndarray:
    """One classical fourth-order Runge-Kutta step."""
    k1 = lorenz96_tendency(state, forcing)
    k2 = lorenz96_tendency(state + 0.5 * dt * k1, forcing)
    k3 = lorenz96_tendency(state + 0.5 * dt * k2, forcing)
    k4 = lorenz96_tendency(state + dt * k3, forcing)
    return state + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def integrate(initial: np.ndarray, n_steps: int, dt: float, forcing: float,
              subsample: int = 1) -> np.ndarray:
    """States after steps subsample, 2*subsample, ...: (members, n_steps //
    subsample, n_grid) from initial states (members, n_grid)."""
    state = np.asarray(initial, dtype=np.float64)
    kept = []
    for step in range(1, n_steps + 1):
        state = rk4_step(state, dt, forcing)
        if step % subsample == 0:
            kept.append(state)
    if not kept:
        return np.empty((state.shape[0], 0, state.shape[-1]))
    return np.stack(kept, axis=1)


def generate_trajectories(config: L96Config, members: int, steps: int,
                          rng: np.random.Generator) -> np.ndarray:
    """(members * kept_steps, n_grid) float32 states on the attractor: random
    perturbations of the rest state F, spun up for ``n_spinup`` steps
    (discarded), then integrated."""
    initial = config.forcing + rng.standard_normal((members, config.n_grid))
    for _ in range(config.n_spinup):
        initial = rk4_step(initial, config.dt, config.forcing)
    states = integrate(initial, steps, config.dt, config.forcing, config.subsample)
    return states.reshape(-1, config.n_grid).astype(np.float32)


def load_or_generate(cache_dir: str, config: L96Config = L96Config(),
                     verbose: bool = True) -> Dict[str, np.ndarray]:
    """Train / validation / test states (N, n_grid), float32, physical units.

    Cached in ``cache_dir`` as ``l96_{split}.npy`` with ``l96_params.json``
    next to them; regenerated whenever the stored parameters differ from
    ``config``. The three splits come from independent initial states (one
    generator seeded from ``config.seed``), so the test trajectory shares no
    states with the training one.
    """
    if not isinstance(config, L96Config):
        raise TypeError(f"config must be an L96Config, got {type(config).__name__}")
    os.makedirs(cache_dir, exist_ok=True)
    params_path = os.path.join(cache_dir, "l96_params.json")
    splits = ("train", "val", "test")
    paths = {s: os.path.join(cache_dir, f"l96_{s}.npy") for s in splits}
    wanted = asdict(config)
    if os.path.exists(params_path) and all(os.path.exists(p) for p in paths.values()):
        with open(params_path) as handle:
            stored = json.load(handle)
        if stored == wanted:
            if verbose:
                print(f"loaded cached Lorenz-96 data from {cache_dir}")
            return {s: np.load(p) for s, p in paths.items()}
    rng = np.random.default_rng(config.seed)
    sizes = {"train": (config.train_members, config.train_steps),
             "val": (config.val_members, config.val_steps),
             "test": (config.test_members, config.test_steps)}
    data = {s: generate_trajectories(config, *sizes[s], rng) for s in splits}
    for split, array in data.items():
        tmp = paths[split] + ".tmp.npy"
        np.save(tmp, array)
        os.replace(tmp, paths[split])
    tmp = params_path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(wanted, handle, indent=2)
    os.replace(tmp, params_path)
    if verbose:
        print(f"generated Lorenz-96 data in {cache_dir}: "
              + ", ".join(f"{s} {a.shape}" for s, a in data.items()))
    return data
