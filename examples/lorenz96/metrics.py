"""Climatological scores of generated Lorenz-96 states against a test set.

All functions take states of shape (N, n_grid) in physical units; the
variables lie on a circle and are statistically identical, so the
histograms pool every grid point (marginal) or every neighbour pair
(x_i, x_{i+1}) (joint). ``valid`` (a boolean vector over the grid, for the
fixed-mask mode; None: all valid) restricts every score to the valid
variables: pairs and lags count only where both ends are valid, the
spectrum is that of the anomalies with masked variables set to 0 (the same
for samples and reference), distances run over the valid variables.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

__all__ = ["hellinger", "marginal_hellinger", "joint_neighbour_hellinger",
           "spatial_autocorrelation", "autocorrelation_error",
           "power_spectrum", "log_spectral_distance", "nearest_distance",
           "memorisation", "evaluate"]


def _check_states(name: str, states) -> np.ndarray:
    states = np.asarray(states)
    if states.ndim != 2 or states.shape[0] < 2 or states.shape[1] < 4:
        raise ValueError(f"{name} must have shape (N >= 2, n_grid >= 4), got "
                         f"{states.shape}")
    if not np.all(np.isfinite(states)):
        raise ValueError(f"{name} holds non-finite values")
    return states.astype(np.float64)


def _check_valid(valid, n_grid: int) -> np.ndarray:
    if valid is None:
        return np.ones(n_grid, dtype=bool)
    valid = np.asarray(valid).astype(bool).reshape(-1)
    if valid.shape != (n_grid,):
        raise ValueError(f"valid must hold one flag per grid point ({n_grid}), "
                         f"got shape {valid.shape}")
    if valid.sum() < 2:
        raise ValueError("valid must mark at least two grid points")
    return valid


def hellinger(p, q) -> float:
    """Hellinger distance sqrt(1 - sum sqrt(p q)) of two histograms (counts,
    normalised here); 0 for identical, 1 for disjoint distributions."""
    p = np.asarray(p, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    if p.shape != q.shape:
        raise ValueError(f"histograms differ in size: {p.shape} vs {q.shape}")
    p = p / max(p.sum(), 1e-300)
    q = q / max(q.sum(), 1e-300)
    return float(np.sqrt(max(0.0, 1.0 - np.sum(np.sqrt(p * q)))))


def _bin_edges(reference: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins over the reference's range widened by 10 %; values
    beyond are clipped into the outer bins."""
    lo, hi = float(reference.min()), float(reference.max())
    pad = 0.1 * (hi - lo)
    return np.linspace(lo - pad, hi + pad, n_bins + 1)


def marginal_hellinger(samples, reference, n_bins: int = 50, valid=None) -> float:
    samples = _check_states("samples", samples)
    reference = _check_states("reference", reference)
    valid = _check_valid(valid, reference.shape[1])
    samples, reference = samples[:, valid], reference[:, valid]
    edges = _bin_edges(reference, n_bins)
    hist = lambda x: np.histogram(np.clip(x.ravel(), edges[0], edges[-1]), edges)[0]
    return hellinger(hist(samples), hist(reference))


def joint_neighbour_hellinger(samples, reference, n_bins: int = 20,
                              valid=None) -> float:
    """Hellinger distance of the 2-D histograms of (x_i, x_{i+1})."""
    samples = _check_states("samples", samples)
    reference = _check_states("reference", reference)
    valid = _check_valid(valid, reference.shape[1])
    pair_valid = valid & np.roll(valid, -1)
    edges = _bin_edges(reference[:, valid], n_bins)

    def histogram(states):
        states = np.clip(states, edges[0], edges[-1])
        first = states[:, pair_valid].ravel()
        second = np.roll(states, -1, axis=1)[:, pair_valid].ravel()
        return np.histogram2d(first, second, bins=(edges, edges))[0]
    return hellinger(histogram(samples), histogram(reference))


def spatial_autocorrelation(states, climatological_mean: Optional[float] = None,
                            valid=None) -> np.ndarray:
    """Correlation of anomalies at lags 0 .. n_grid // 2 (circular), pooled
    over grid points and states."""
    states = _check_states("states", states)
    valid = _check_valid(valid, states.shape[1])
    mean = states[:, valid].mean() if climatological_mean is None \
        else climatological_mean
    anomaly = states - mean
    variance = np.mean(anomaly[:, valid] ** 2)
    out = []
    for lag in range(states.shape[1] // 2 + 1):
        both = valid & np.roll(valid, -lag)
        product = anomaly * np.roll(anomaly, -lag, axis=1)
        out.append(product[:, both].mean() if both.any() else np.nan)
    return np.array(out) / max(variance, 1e-300)


def autocorrelation_error(samples, reference, valid=None) -> float:
    """RMS difference of the spatial autocorrelation functions (lags >= 1
    with valid pairs), both computed around the reference's mean."""
    reference = _check_states("reference", reference)
    valid = _check_valid(valid, reference.shape[1])
    mean = float(reference[:, valid].mean())
    diff = spatial_autocorrelation(samples, mean, valid) - \
        spatial_autocorrelation(reference, mean, valid)
    return float(np.sqrt(np.nanmean(diff[1:] ** 2)))


def power_spectrum(states, mean: float = 0.0, valid=None) -> np.ndarray:
    """Mean power of the spatial Fourier modes (wavenumbers 1 .. n_grid/2)
    of the anomalies ``states - mean`` (masked variables set to 0)."""
    states = _check_states("states", states)
    valid = _check_valid(valid, states.shape[1])
    anomaly = np.where(valid[None], states - mean, 0.0)
    return (np.abs(np.fft.rfft(anomaly, axis=1)) ** 2).mean(axis=0)[1:]


def log_spectral_distance(samples, reference, valid=None) -> float:
    """sqrt(mean_k (10 log10(P_samples(k) / P_reference(k)))^2), in dB."""
    reference = _check_states("reference", reference)
    valid = _check_valid(valid, reference.shape[1])
    mean = float(reference[:, valid].mean())
    ratio = power_spectrum(samples, mean, valid) / np.maximum(
        power_spectrum(reference, mean, valid), 1e-300)
    return float(np.sqrt(np.mean((10.0 * np.log10(np.maximum(ratio, 1e-300))) ** 2)))


def nearest_distance(queries, references, chunk_size: int = 2048) -> np.ndarray:
    """Euclidean distance of every query state to its nearest reference state
    (chunked: no full queries x references matrix is kept)."""
    queries = torch.as_tensor(np.asarray(queries, dtype=np.float64))
    references = torch.as_tensor(np.asarray(references, dtype=np.float64))
    ref_sq = (references ** 2).sum(1)
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        chunk = queries[start:start + chunk_size]
        sq = (chunk ** 2).sum(1, keepdim=True) + ref_sq[None] - 2 * chunk @ references.T
        out.append(sq.min(dim=1).values.clamp_min(0).sqrt())
    return torch.cat(out).numpy()


def memorisation(samples, train, test, n_max: int = 2000,
                 valid=None) -> Dict[str, float]:
    """Mean distance of samples, and of independent test states, to their
    nearest training state, and the ratio samples / test. A ratio well below
    1 means samples sit closer to training states than new states of the
    system do: the model memorises."""
    samples = _check_states("samples", samples)
    train = _check_states("train", train)
    test = _check_states("test", test)
    valid = _check_valid(valid, train.shape[1])
    sample_distance = float(nearest_distance(samples[:n_max, valid], train[:, valid]).mean())
    test_distance = float(nearest_distance(test[:n_max, valid], train[:, valid]).mean())
    return {"nn_distance_samples": sample_distance,
            "nn_distance_test": test_distance,
            "memorisation_ratio": sample_distance / max(test_distance, 1e-300)}


def evaluate(samples, train, test, valid=None) -> Dict[str, float]:
    """Every score of this module for one set of samples."""
    scores = {
        "marginal_hellinger": marginal_hellinger(samples, test, valid=valid),
        "joint_hellinger": joint_neighbour_hellinger(samples, test, valid=valid),
        "autocorrelation_error": autocorrelation_error(samples, test, valid=valid),
        "log_spectral_distance_db": log_spectral_distance(samples, test, valid=valid),
    }
    scores.update(memorisation(samples, train, test, valid=valid))
    return scores
