"""PNG figures of the Lorenz-96 example (matplotlib, Agg backend).

Every figure is titled with what it shows and the training step of the
model it shows (``step``); every colour scale has a labelled colourbar.
:func:`plot_overview` tiles the written PNGs into one image.
"""
from __future__ import annotations

import csv
import math
import os
from typing import Dict, Optional, Sequence

import matplotlib
matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from metrics import power_spectrum, spatial_autocorrelation  # noqa: E402

__all__ = ["plot_marginals", "plot_autocorrelation", "plot_spectra",
           "plot_hovmoller", "plot_joint", "plot_training_log",
           "plot_overview", "joint_log_density", "title"]

# One colour per set in every figure (the test set is always black).
COLOURS = {"model": "tab:blue", "gaussian": "tab:orange",
           "optimal": "tab:green"}


def title(what: str, step: Optional[int]) -> str:
    """A figure title naming what it shows and the training step."""
    return what if step is None else f"{what}\n(model after {step} training steps)"


def _colour(name: str, index: int) -> str:
    return COLOURS.get(name, f"C{index + 3}")


def _all_valid(valid, n_grid: int) -> np.ndarray:
    return np.ones(n_grid, bool) if valid is None else np.asarray(valid, bool)


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_marginals(sets: Dict[str, np.ndarray], reference: np.ndarray,
                   path: str, valid=None, n_bins: int = 60,
                   step: Optional[int] = None) -> str:
    """Histograms of all (valid) grid values: the test set and every sample set."""
    valid = _all_valid(valid, reference.shape[1])
    edges = np.linspace(reference.min() - 1, reference.max() + 1, n_bins + 1)
    fig, ax = plt.subplots(figsize=(6, 4.3), layout="constrained")
    ax.hist(reference[:, valid].ravel(), edges, density=True, color="0.8",
            label="test")
    for index, (name, states) in enumerate(sets.items()):
        ax.hist(states[:, valid].ravel(), edges, density=True,
                histtype="step", lw=1.5, label=name,
                color=_colour(name, index))
    ax.set_xlabel("$x_i$")
    ax.set_ylabel("probability density")
    ax.set_title(title("Marginal distribution of $x_i$ (all grid points)", step))
    ax.legend()
    return _save(fig, path)


def plot_autocorrelation(sets: Dict[str, np.ndarray], reference: np.ndarray,
                         path: str, valid=None,
                         step: Optional[int] = None) -> str:
    """The spatial autocorrelation (top) and, since the three sets lie
    within a line width of each other there, each set's difference from
    the test set's (bottom)."""
    mean = float(reference.mean())
    ref = spatial_autocorrelation(reference, mean, valid)
    lags = np.arange(ref.size)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(6, 6), sharex=True, layout="constrained",
        gridspec_kw={"height_ratios": (3, 2)})
    top.plot(lags, ref, "k-", lw=2, label="test")
    for index, (name, states) in enumerate(sets.items()):
        acf = spatial_autocorrelation(states, mean, valid)
        top.plot(lags, acf, "--", color=_colour(name, index), label=name)
        bottom.plot(lags[1:], (acf - ref)[1:], "o-", ms=3,
                    color=_colour(name, index), label=name)
    top.axhline(0, color="0.6", lw=0.8)
    bottom.axhline(0, color="k", lw=1)
    top.set_ylabel("autocorrelation")
    bottom.set_ylabel("difference from test")
    bottom.set_xlabel("lag (grid points)")
    top.set_title(title("Spatial autocorrelation of the anomalies", step))
    top.legend()
    return _save(fig, path)


def plot_spectra(sets: Dict[str, np.ndarray], reference: np.ndarray,
                 path: str, valid=None, step: Optional[int] = None) -> str:
    """Power spectra of the anomalies as fractions of the test set's total
    anomaly variance (top), and each set's ratio to the test spectrum in dB
    (bottom): the quantity whose RMS is the log-spectral distance."""
    mean = float(reference.mean())
    ref = power_spectrum(reference, mean, valid)
    total = float(ref.sum())
    k = np.arange(1, ref.size + 1)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(6, 6.5), sharex=True, layout="constrained",
        gridspec_kw={"height_ratios": (3, 2)})
    top.semilogy(k, ref / total, "k-", lw=2, label="test")
    for index, (name, states) in enumerate(sets.items()):
        power = power_spectrum(states, mean, valid)
        top.semilogy(k, power / total, "--", color=_colour(name, index),
                     label=name)
        bottom.plot(k, 10 * np.log10(power / ref), "o-", ms=3,
                    color=_colour(name, index), label=name)
    bottom.axhline(0, color="k", lw=1)
    top.set_ylabel("power / total test variance")
    bottom.set_ylabel("10 log$_{10}$(P / P$_{test}$) (dB)")
    bottom.set_xlabel("zonal wavenumber k")
    top.set_title(title("Power spectrum of the anomalies", step))
    top.legend()
    return _save(fig, path)


def plot_hovmoller(samples: np.ndarray, test: np.ndarray, path: str,
                   n_rows: int = 200, valid=None,
                   step: Optional[int] = None) -> str:
    """Hovmöller-style images: a stretch of the test trajectory (time down)
    next to independent samples (one per row; no time order). The diverging
    colour map is centred on the test set's mean (about 2.3), so red and
    blue are anomalies above and below the climatology; masked variables
    are grey."""
    n_rows = min(n_rows, samples.shape[0], test.shape[0])
    valid = _all_valid(valid, test.shape[1])
    centre = float(test[:, valid].mean())
    half_range = float(np.abs(test[:, valid] - centre).max())
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.7")
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.8), sharey=True,
                             layout="constrained")
    for ax, data, name in ((axes[0], test[:n_rows], "test trajectory"),
                           (axes[1], samples[:n_rows], "generated samples")):
        shown = np.ma.masked_array(data, np.broadcast_to(~valid, data.shape))
        image = ax.imshow(shown, aspect="auto", cmap=cmap,
                          vmin=centre - half_range, vmax=centre + half_range,
                          interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("grid point i")
    axes[0].set_ylabel("time step (test) / sample index (generated)")
    bar = fig.colorbar(image, ax=axes, shrink=0.85)
    bar.set_label(f"$x_i$ (colours centred on the test mean {centre:.2f})")
    fig.suptitle(title("Lorenz-96 states: test trajectory and generated "
                       "samples", step))
    return _save(fig, path)


def joint_log_density(states: np.ndarray, edges: np.ndarray,
                      valid=None) -> np.ndarray:
    """log10 of the 2-D density of neighbours (x_i, x_{i+1}) over the pairs
    whose both ends are valid; -inf in empty bins."""
    valid = _all_valid(valid, states.shape[1])
    pairs = valid & np.roll(valid, -1)
    first = states[:, pairs].ravel()
    second = np.roll(states, -1, axis=1)[:, pairs].ravel()
    hist = np.histogram2d(first, second, bins=(edges, edges), density=True)[0]
    with np.errstate(divide="ignore"):
        return np.log10(hist)


def plot_joint(sets: Dict[str, np.ndarray], reference: np.ndarray, path: str,
               n_bins: int = 40, valid=None, decades: float = 4.0,
               step: Optional[int] = None) -> str:
    """2-D histograms of neighbours (x_i, x_{i+1}) as log10 density on one
    colour scale shared by every panel (its top is the largest density of
    any panel, its bottom ``decades`` below; empty bins are white)."""
    valid = _all_valid(valid, reference.shape[1])
    edges = np.linspace(reference[:, valid].min(), reference[:, valid].max(),
                        n_bins + 1)
    panels = {"test": reference, **sets}
    densities = {name: joint_log_density(states, edges, valid)
                 for name, states in panels.items()}
    top = max(float(np.max(d[np.isfinite(d)])) for d in densities.values())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels) + 1, 3.9),
                             sharex=True, sharey=True, layout="constrained")
    axes = np.atleast_1d(axes)
    for ax, (name, density) in zip(axes, densities.items()):
        image = ax.imshow(np.ma.masked_invalid(density).T, origin="lower",
                          cmap="viridis", vmin=top - decades, vmax=top,
                          extent=(edges[0], edges[-1], edges[0], edges[-1]))
        ax.set_title(name)
        ax.set_xlabel("$x_i$")
    axes[0].set_ylabel("$x_{i+1}$")
    bar = fig.colorbar(image, ax=axes, shrink=0.9)
    bar.set_label("log$_{10}$ probability density")
    fig.suptitle(title("Joint distribution of neighbours $(x_i, x_{i+1})$", step))
    return _save(fig, path)


def plot_training_log(log_csv: str, path: str,
                      step: Optional[int] = None) -> Optional[str]:
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
    fig, ax = plt.subplots(figsize=(6, 4.3), layout="constrained")
    if train:
        ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), "o-", label="validation (EMA weights)")
    ax.set_xlabel("training step")
    ax.set_ylabel("diffusion loss")
    ax.set_title(title("Training and validation loss", step))
    ax.legend()
    return _save(fig, path)


def _is_wide(image: np.ndarray) -> bool:
    """A figure of several panels side by side (the joint histograms)."""
    return image.shape[1] > 2.5 * image.shape[0]


def plot_overview(paths: Sequence[str], path: str, columns: int = 3,
                  heading: Optional[str] = None, width: float = 18.0) -> str:
    """Every PNG of ``paths`` (None entries skipped) in one image, in the
    given order: wide figures (aspect > 2.5) get a row of their own, the
    others fill rows of ``columns``; each row is as tall as its images."""
    images = [mpimg.imread(p) for p in paths if p]
    if not images:
        raise ValueError("paths must name at least one PNG")
    rows, row = [], []
    for image in images:
        if row and (_is_wide(image) or len(row) == columns):
            rows.append(row)
            row = []
        row.append(image)
        if _is_wide(image):
            rows.append(row)
            row = []
    if row:
        rows.append(row)

    def spans_row(row) -> bool:
        return len(row) == 1 and _is_wide(row[0])

    # each row is as tall as its tallest image scaled to its cell's width
    heights = [max((width if spans_row(r) else width / columns)
                   * image.shape[0] / image.shape[1] for image in r)
               for r in rows]
    title_in = 0.6 if heading else 0.0
    fig = plt.figure(figsize=(width, sum(heights) + title_in))
    grid = fig.add_gridspec(len(rows), columns, height_ratios=heights,
                            hspace=0.02, wspace=0.02, left=0.005, right=0.995,
                            bottom=0.005,
                            top=0.995 - title_in / fig.get_figheight())
    for index, row in enumerate(rows):
        for column, image in enumerate(row):
            cell = grid[index, :] if spans_row(row) else grid[index, column]
            ax = fig.add_subplot(cell)
            ax.imshow(image)
            ax.axis("off")
    if heading:
        fig.suptitle(heading, fontsize=16, y=0.998)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
