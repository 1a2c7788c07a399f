"""The fused-op layer: a few general primitives, and the diffusion ops on them.

Primitives (one kernel family per backend, SPEC §7 and §9):

- :func:`randn`      counter-based normal noise, element i = noise[offset + i].
- :func:`affine`     the per-sample affine step
                     out = sum_k c_k[r] in_k + c_xi[r] xi(seed) (+ c_1[r]),
                     masked, with an optional second output sharing the loads.
- :func:`affine_sum` per-row masked sums of that combination (or its square):
                     the reduction behind the loss and the masked mean.

Diffusion ops built on them, with the per-sample coefficient algebra in
Python on vectors of length B:

- :func:`diffuse`         z = alpha x + sigma eps, eps regenerated, never stored.
- :func:`diffusion_loss`  the loss of SPEC §5 and the per-sample statistic.
- :func:`masked_mean`     the masked average with broadcast-aware counts.

Which implementation runs is decided by :mod:`ddm_fast.backends` from the
tensors' device. Every function here checks its arguments and raises a
``TypeError``/``ValueError`` naming the bad one.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from .. import backends
from .._validation import (check_float_tensor, check_mask, check_per_sample,
                           check_same_device, check_same_shapes, check_seed,
                           check_tensor)
from ..parameterization import Parameterization, get_param
from ..utils import _reduce_dims, alpha_sigma, mask_count, masked_average

__all__ = ["randn", "affine", "affine_sum", "diffuse", "diffusion_loss",
           "masked_mean", "coefficient_dtype"]

MASKED_MEAN_EPS = 1e-9


def coefficient_dtype(like: torch.Tensor) -> torch.dtype:
    """dtype of per-sample coefficient vectors for data ``like``: float64 for
    float64 data, float32 otherwise (the kernels compute in float32)."""
    return torch.float64 if like.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- primitives
def randn(shape: Sequence[int], seed: int, offset: int = 0,
          dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Counter-based standard normal noise of SPEC §9.

    Element i of the flattened result is noise[offset + i] for the stream
    ``seed``: a pure function of (seed, offset + i), identical on every
    backend, so a member's noise does not depend on how a batch is split.
    """
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(shape)
    if any((not isinstance(s, int)) or s < 0 for s in shape):
        raise ValueError(f"shape must be a sequence of non-negative ints, "
                         f"got {shape}")
    check_seed("seed", seed)
    _check_offset(offset)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    return backends.get(device).randn(shape, seed, offset, dtype, device)


def _check_offset(offset) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")
    return offset


def _check_affine_args(inputs, coeffs, mask, seed, offset, coeffs2, bias):
    if isinstance(inputs, torch.Tensor):
        raise TypeError("inputs must be a list of tensors, got a single tensor "
                        "(wrap it: [x])")
    inputs = list(inputs)
    if not 1 <= len(inputs) <= 3:
        raise ValueError(f"inputs must hold 1 to 3 tensors, got {len(inputs)}")
    names = [f"inputs[{k}]" for k in range(len(inputs))]
    for n, t in zip(names, inputs):
        check_float_tensor(n, t)
    check_same_shapes(names, inputs)
    like = inputs[0]
    n_cols = len(inputs) + (seed is not None) + bool(bias)
    for name, c in (("coeffs", coeffs), ("coeffs2", coeffs2)):
        if c is None:
            continue
        check_float_tensor(name, c)
        check_same_device(name, c, like, "inputs[0]")
        if c.ndim != 2 or c.shape[1] != n_cols:
            raise ValueError(
                f"{name} must have shape (rows, {n_cols}) for {len(inputs)} "
                f"input(s){', noise' if seed is not None else ''}"
                f"{', bias' if bias else ''}; got {tuple(c.shape)}")
        rows = c.shape[0]
        if rows < 1 or like.numel() % rows != 0:
            raise ValueError(
                f"{name} has {rows} rows, which must divide the number of "
                f"elements of inputs[0] ({like.numel()})")
    if coeffs2 is not None and coeffs2.shape != coeffs.shape:
        raise ValueError(f"coeffs2 must have the shape of coeffs "
                         f"{tuple(coeffs.shape)}, got {tuple(coeffs2.shape)}")
    check_mask(mask, like, like_name="inputs[0]")
    if seed is not None:
        check_seed("seed", seed)
    _check_offset(offset)
    return inputs


def affine(inputs: Sequence[torch.Tensor], coeffs: torch.Tensor,
           mask: Optional[torch.Tensor] = None, seed: Optional[int] = None,
           offset: int = 0, coeffs2: Optional[torch.Tensor] = None,
           bias: bool = False):
    """Per-row affine combination of up to three tensors, plus noise, masked.

    ``out[r, j] = sum_k coeffs[r, k] inputs[k][r, j] + coeffs[r, K] xi[r, j]
    + coeffs[r, K+1]`` over the flattened tensors split into ``coeffs.shape[0]``
    equal rows; the noise column exists when ``seed`` is given, the constant
    column when ``bias``. Masked positions are 0. With ``coeffs2`` a second
    combination of the same loads is returned: ``(out, out2)``.
    The output has the dtype of ``inputs[0]``; math is float32 (float64 for
    float64 data).
    """
    inputs = _check_affine_args(inputs, coeffs, mask, seed, offset, coeffs2,
                                bias)
    outs = backends.get(inputs[0].device).affine(
        inputs, coeffs, mask, seed, offset, coeffs2, bias)
    return (outs[0], outs[1]) if coeffs2 is not None else outs[0]


def affine_sum(inputs: Sequence[torch.Tensor], coeffs: torch.Tensor,
               mask: Optional[torch.Tensor] = None, seed: Optional[int] = None,
               offset: int = 0, power: int = 2, bias: bool = False):
    """Per-row sums over valid elements of the affine combination of
    :func:`affine`, raised to ``power`` (1 or 2). Shape (rows,), float32
    (float64 for float64 data); deterministic (no atomics)."""
    if power not in (1, 2):
        raise ValueError(f"power must be 1 or 2, got {power!r}")
    inputs = _check_affine_args(inputs, coeffs, mask, seed, offset, None, bias)
    return backends.get(inputs[0].device).affine_sum(
        inputs, coeffs, mask, seed, offset, power, bias)


# ----------------------------------------------------------- diffusion ops
def _per_sample_gamma(gamma, latent: torch.Tensor) -> torch.Tensor:
    gamma = check_per_sample("gamma", gamma, latent.shape[0], latent)
    return gamma.to(coefficient_dtype(latent))


def _channel_vector(name, value, channels: int, like: torch.Tensor):
    if isinstance(value, (int, float)):
        return torch.full((channels,), float(value), device=like.device,
                          dtype=coefficient_dtype(like))
    check_float_tensor(name, value)
    check_same_device(name, value, like, "latent")
    if value.numel() == 1:
        return value.reshape(1).expand(channels).to(coefficient_dtype(like))
    if value.numel() != channels:
        raise ValueError(f"{name} must be a scalar or hold one value per channel "
                         f"(dim 1, size {channels}), got shape {tuple(value.shape)}")
    return value.reshape(channels).to(coefficient_dtype(like))


def diffuse(latent: torch.Tensor, gamma, seed: int,
            mask: Optional[torch.Tensor] = None, offset: int = 0,
            mean=None, std=None) -> torch.Tensor:
    """Noised latent z = alpha x + sigma eps with per-sample gamma (SPEC §1).

    eps is noise[offset + i] of stream ``seed`` (SPEC §9), generated inside
    the op and never stored; :func:`diffusion_loss` regenerates it. Masked
    positions are 0. With ``mean``/``std`` (scalars or one value per channel,
    dim 1) the raw data is Gaussian-encoded on the fly:
    x = (latent - mean) / std.
    """
    check_float_tensor("latent", latent, min_ndim=1)
    gamma = _per_sample_gamma(gamma, latent)
    check_seed("seed", seed)
    alpha, sigma = alpha_sigma(gamma)
    if mean is None and std is None:
        coeffs = torch.stack((alpha, sigma), dim=1)
        return affine([latent], coeffs, mask, seed, offset)
    if latent.ndim < 2:
        raise ValueError("latent must have a channel dimension (dim 1) for the "
                         f"fused encoding, got shape {tuple(latent.shape)}")
    channels = latent.shape[1]
    mean = _channel_vector("mean", 0.0 if mean is None else mean, channels, latent)
    std = _channel_vector("std", 1.0 if std is None else std, channels, latent)
    # rows = (sample, channel): z = (alpha/std) raw + sigma eps - alpha mean/std
    scale = alpha[:, None] / std[None, :]
    coeffs = torch.stack((scale, sigma[:, None].expand_as(scale),
                          -scale * mean[None, :]), dim=-1).reshape(-1, 3)
    return affine([latent], coeffs, mask, seed, offset, bias=True)


def _sample_dims(x: torch.Tensor) -> Tuple[int, ...]:
    return tuple(range(1, x.ndim))


def diffusion_loss(prediction: torch.Tensor, latent: torch.Tensor, gamma,
                   seed: int, mask: Optional[torch.Tensor] = None,
                   param: Union[str, Parameterization, None] = "eps",
                   weighting=None, density=None, offset: int = 0
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The masked diffusion loss of SPEC §5 and its per-sample statistic.

    ``loss = masked_mean_{b,...} lambda_b / p_b * w_b * (f - f*)^2`` and
    ``per_sample[b] = masked_mean_{sample b} lambda_b * w_b * (f - f*)^2``,
    with f* = a_b x + c_b eps from ``param`` and eps regenerated from
    (``seed``, ``offset``) exactly as :func:`diffuse` drew it.
    ``weighting``: a module of gamma, a per-sample tensor, or None (ELBO, 1);
    ``density``: a per-sample tensor p(gamma_b) or None (1).
    Differentiable in ``prediction`` and in ``latent`` (a learnable encoder).
    """
    check_float_tensor("prediction", prediction, min_ndim=1)
    check_float_tensor("latent", latent, min_ndim=1)
    check_same_shapes(["prediction", "latent"], [prediction, latent])
    gamma = _per_sample_gamma(gamma, latent)
    param = get_param(param)
    batch = latent.shape[0]
    if weighting is None:
        lam = torch.ones_like(gamma)
    elif isinstance(weighting, torch.nn.Module):
        lam = weighting(gamma).reshape(batch)
    else:
        lam = check_per_sample("weighting", weighting, batch, latent).to(gamma.dtype)
    if density is None:
        dens = torch.ones_like(gamma)
    else:
        dens = check_per_sample("density", density, batch, latent).to(gamma.dtype)
    a, c = param.target_coefficients(gamma)
    w = param.error_weight(gamma)
    ones = torch.ones_like(gamma)
    coeffs = torch.stack((ones, -a, -c), dim=1)
    sq_sums = affine_sum([prediction, latent], coeffs, mask, seed, offset, power=2)
    counts = mask_count(mask, latent.shape, _sample_dims(latent),
                        dtype=sq_sums.dtype, device=latent.device).reshape(batch)
    factor = (lam * w).to(sq_sums.dtype)
    per_sample = factor * sq_sums / (counts + MASKED_MEAN_EPS)
    loss = (factor / dens.to(sq_sums.dtype) * sq_sums).sum() / (
        counts.sum() + MASKED_MEAN_EPS)
    return loss, per_sample


def masked_mean(x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                dim=None) -> torch.Tensor:
    """Mean over the valid elements of ``x``; the count is that of the mask
    broadcast to ``x`` (plus 1e-9), so an all-masked reduction gives 0.

    ``dim``: None (everything) or any set of dimensions. Reductions over
    trailing dimensions (e.g. per sample, ``dim=(1, 2, 3)``) run through the
    fused :func:`affine_sum`; other dimension sets use the reference path.
    """
    check_float_tensor("x", x)
    check_mask(mask, x, like_name="x")
    dims = _reduce_dims(x.ndim, dim)
    trailing = dims == tuple(range(x.ndim - len(dims), x.ndim))
    if x.ndim == 0 or not dims or not trailing or x.numel() == 0:
        return masked_average(x, mask, dim=dim, eps=MASKED_MEAN_EPS)
    keep_shape = x.shape[:x.ndim - len(dims)]
    rows = 1
    for s in keep_shape:
        rows *= s
    ones = torch.ones((rows, 1), dtype=coefficient_dtype(x), device=x.device)
    sums = affine_sum([x], ones, mask, power=1)
    counts = mask_count(mask, x.shape, dims, dtype=sums.dtype, device=x.device)
    out = sums.reshape(keep_shape) / (counts + MASKED_MEAN_EPS)
    return out.to(x.dtype)
