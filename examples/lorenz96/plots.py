"""PNG figures of the Lorenz-96 example (matplotlib, Agg backend)."""
from __future__ import annotations

import csv
import os
from typing import Dict, Optional

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from metrics import power_spectrum, spatial_autocorrelation  # noqa: E402

__all__ = ["plot_marginals", "plot_autocorrelation", "plot_spectra",
           "plot_hovmoller", "plot_joint", "plot_training_log"]


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_marginals(sets: Dict[str, np.ndarray], reference: np.ndarray,
                   path: str, valid=None, n_bins: int = 60) -> str:
    """Histograms of all (valid) grid values: the test set and every sample set."""
    valid = np.ones(reference.shape[1], bool) if valid is None else valid
    edges = np.linspace(reference.min() - 1, reference.max() + 1, n_bins + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(reference[:, valid].ravel(), edges, density=True, color="0.8",
            label="test")
    for name, states in sets.items():
        ax.hist(states[:, valid].ravel(), edges, density=True,
                histtype="step", lw=1.5, label=name)
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.legend()
    return _save(fig, path)


def plot_autocorrelation(sets: Dict[str, np.ndarray], reference: np.ndarray,
                         path: str, valid=None) -> str:
    mean = float(reference.mean())
    fig, ax = plt.subplots(figsize=(6, 4))
    ref = spatial_autocorrelation(reference, mean, valid)
    ax.plot(ref, "k-", lw=2, label="test")
    for name, states in sets.items():
        ax.plot(spatial_autocorrelation(states, mean, valid), "--", label=name)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("lag (grid points)")
    ax.set_ylabel("autocorrelation")
    ax.legend()
    return _save(fig, path)


def plot_spectra(sets: Dict[str, np.ndarray], reference: np.ndarray,
                 path: str, valid=None) -> str:
    mean = float(reference.mean())
    fig, ax = plt.subplots(figsize=(6, 4))
    ref = power_spectrum(reference, mean, valid)
    k = np.arange(1, ref.size + 1)
    ax.semilogy(k, ref, "k-", lw=2, label="test")
    for name, states in sets.items():
        ax.semilogy(k, power_spectrum(states, mean, valid), "--", label=name)
    ax.set_xlabel("wavenumber")
    ax.set_ylabel("power")
    ax.legend()
    return _save(fig, path)


def plot_hovmoller(samples: np.ndarray, test: np.ndarray, path: str,
                   n_rows: int = 200) -> str:
    """Hovmöller-style images: a stretch of the test trajectory (time down)
    next to independent samples (one per row; no time order)."""
    n_rows = min(n_rows, samples.shape[0], test.shape[0])
    vmax = float(np.abs(test).max())
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharey=True)
    for ax, data, title in ((axes[0], test[:n_rows], "test trajectory"),
                            (axes[1], samples[:n_rows], "generated samples")):
        image = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-vmax,
                          vmax=vmax, interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("grid point")
    axes[0].set_ylabel("time step / sample")
    fig.colorbar(image, ax=axes, shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_joint(sets: Dict[str, np.ndarray], reference: np.ndarray, path: str,
               n_bins: int = 40) -> str:
    """2-D histograms of neighbours (x_i, x_{i+1}), log density."""
    edges = np.linspace(reference.min(), reference.max(), n_bins + 1)
    panels = {"test": reference, **sets}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2),
                             sharex=True, sharey=True)
    axes = np.atleast_1d(axes)
    for ax, (name, states) in zip(axes, panels.items()):
        hist = np.histogram2d(states.ravel(), np.roll(states, -1, 1).ravel(),
                              bins=(edges, edges), density=True)[0]
        ax.imshow(np.log10(hist.T + 1e-5), origin="lower", cmap="viridis",
                  extent=(edges[0], edges[-1], edges[0], edges[-1]),
                  vmin=-5, vmax=np.log10(hist.max() + 1e-5))
        ax.set_title(name)
        ax.set_xlabel("$x_i$")
    axes[0].set_ylabel("$x_{i+1}$")
    return _save(fig, path)


def plot_training_log(log_csv: str, path: str) -> Optional[str]:
    """Training and validation loss against the step (None without a log)."""
    if not os.path.exists(log_csv):
        return None
    train, val = [], []
    with open(log_csv) as handle:
        for row in csv.DictReader(handle):
            if row["split"] == "train" and row["loss"]:
                train.append((int(row["step"]), float(row["loss"])))
            elif row["split"] == "val" and row["val_loss"]:
                val.append((int(row["step"]), float(row["val_loss"])))
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), "o-", label="validation (EMA)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    return _save(fig, path)
