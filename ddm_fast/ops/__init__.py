"""The fused-op layer: four primitives, and the diffusion ops on them.

Primitives (one kernel family per backend; docs/math.md, "The kernels"):

- :func:`randn`       counter-based normal noise, element i = noise[offset + i].
- :func:`affine`      the per-row affine step
                      out = sum_k c_k[r] in_k + c_xi[r] xi(seed) (+ c_1[r]),
                      masked, with an optional second output sharing the loads.
- :func:`affine_sum`  per-row masked sums of that combination (or its square):
                      the reduction behind the loss and the masked mean.
- :func:`affine_dots` per-row masked sums of w * column of the combination:
                      the coefficient gradients.

Diffusion ops built on them, over tensors and per-sample coefficient vectors
(the parameterization and weighting algebra that produces those vectors
lives in the API layer, :mod:`ddm_fast.loss`):

- :func:`diffuse`        z = alpha x + sigma eps, eps regenerated, never stored.
- :func:`weighted_loss`  the masked, per-sample weighted squared error against
                         f* = a x + c eps, and its per-sample statistic.
- :func:`masked_mean`    the masked average with broadcast-aware counts.

This layer owns the argument checks, the math-dtype rule
(:func:`math_dtype`), the preparation of tensors for the kernels and the
autograd (:mod:`.library`); which backend runs is decided by
:mod:`ddm_fast.backends` from the tensors' device. Every function raises a
``TypeError``/``ValueError`` naming the bad argument.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from .. import backends
from .._masks import mask_count, masked_average_torch, reduce_dims
from .._math import alpha_sigma
from .._validation import (check_finite_number, check_float_tensor, check_mask,
                           check_per_sample, check_same_device,
                           check_same_shapes, check_seed, check_values)
from ..backends.layout import prepare_mask
from ..seeds import kernel_seed
from . import library

__all__ = ["randn", "affine", "affine_sum", "affine_dots", "diffuse",
           "weighted_loss", "masked_mean", "math_dtype", "coefficient_dtype"]

MASKED_MEAN_EPS = 1e-9
MAX_INDEX = 2 ** 63 - 1


def math_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """The dtype the kernels compute in: float64 when any of ``tensors`` is
    float64, float32 otherwise (float32 math for bfloat16/float16 data).
    The one statement of this rule; the coefficient table carries it to the
    backends, which compute in ``coeffs.dtype``."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def coefficient_dtype(like: torch.Tensor) -> torch.dtype:
    """dtype of per-sample coefficient vectors for data ``like``."""
    return math_dtype(like)


@torch.compiler.assume_constant_result
def _backend_name(device_type: str) -> str:
    # Constant under torch.compile: choosing the backend and defining its ops
    # happen once, in Python, never inside a graph.
    name = backends.current(device_type)
    library.primitives(name)
    return name


def _primitives(device: torch.device) -> library.Primitives:
    return library._CACHE[_backend_name(device.type)]


def _direct(*tensors) -> bool:
    """True when the plain backend function may run instead of the op: no
    gradient can flow and no graph is being traced (less overhead)."""
    if torch.compiler.is_compiling():
        return False
    if not torch.is_grad_enabled():
        return True
    return not any(t is not None and t.requires_grad for t in tensors)


# ---------------------------------------------------------------- primitives
def randn(shape: Union[int, Sequence[int]], seed: int, offset: int = 0,
          dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Counter-based standard normal noise (docs/math.md, "Counter-based noise").

    Element i of the flattened result is noise[offset + i] for the stream
    ``seed``: a pure function of (seed, offset + i), identical on every
    backend, so a member's noise does not depend on how a batch is split.
    """
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape):
        raise ValueError(f"shape must be a sequence of non-negative ints, "
                         f"got {shape!r}")
    shape = tuple(shape)
    numel = 1
    for s in shape:
        numel *= s
    _check_offset(offset, numel)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    direct = _direct()
    _check_seed(seed, device, direct)
    p = _primitives(device)
    fn = p.module.randn if direct else p.randn
    return fn(numel, seed, offset, dtype, device).reshape(shape)


def _check_seed(seed, device: torch.device, direct: bool):
    """An int seed, or a seed word (:func:`ddm_fast.seeds.seed_word`) on the
    data's device. Seed words serve inference and CUDA-graph replay: where
    gradients flow or torch.compile traces, the seed must be an int."""
    if isinstance(seed, torch.Tensor):
        kernel_seed(seed, device)
        if not direct:
            raise ValueError(
                "seed is a seed word (a tensor) where gradients flow or "
                "torch.compile traces; there it must be a Python int")
        return seed
    return check_seed("seed", seed)


def _check_offset(offset, numel: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")
    if offset + numel > MAX_INDEX:
        raise ValueError(f"offset + number of elements must stay below 2**63 "
                         f"(noise indices are int64), got offset={offset} for "
                         f"{numel} elements")
    return offset


def _check_affine_args(inputs, coeffs, mask, seed, offset, coeffs2, bias):
    if isinstance(inputs, torch.Tensor):
        raise TypeError("inputs must be a list of tensors, got a single tensor "
                        "(wrap it: [x])")
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(f"inputs must be a list of 1 to 3 tensors, got "
                        f"{type(inputs).__name__}")
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
            if name == "coeffs":
                raise TypeError("coeffs must be a tensor of shape (rows, "
                                f"{n_cols}), got None")
            continue
        check_float_tensor(name, c)
        check_same_device(name, c, like, "inputs[0]")
        if c.ndim != 2 or c.shape[1] != n_cols:
            raise ValueError(
                f"{name} must have shape (rows, {n_cols}) for {len(inputs)} "
                f"input(s){', noise' if seed is not None else ''}"
                f"{', bias' if bias else ''}; got {tuple(c.shape)}")
        rows = c.shape[0]
        if like.numel() == 0 and rows == 0:
            continue  # an empty batch: empty results
        if rows < 1 or like.numel() % rows != 0:
            raise ValueError(
                f"{name} has {rows} rows, which must divide the number of "
                f"elements of inputs[0] ({like.numel()})")
    if coeffs2 is not None and coeffs2.shape != coeffs.shape:
        raise ValueError(f"coeffs2 must have the shape of coeffs "
                         f"{tuple(coeffs.shape)}, got {tuple(coeffs2.shape)}")
    check_mask(mask, like, like_name="inputs[0]")
    if seed is not None:
        _check_seed(seed, like.device, _direct(*inputs, coeffs, coeffs2))
    _check_offset(offset, like.numel())
    return inputs


def _prepared(inputs, coeffs, coeffs2, mask):
    """What every backend receives: contiguous inputs (three slots),
    coefficient tables in the math dtype, the mask in a kernel layout."""
    math = math_dtype(*inputs, coeffs)
    xs = [t.contiguous() for t in inputs] + [None] * (3 - len(inputs))
    coeffs = coeffs.to(math).contiguous()
    if coeffs2 is not None:
        coeffs2 = coeffs2.to(math).contiguous()
    return xs, coeffs, coeffs2, prepare_mask(mask, inputs[0].shape)


def affine(inputs: Sequence[torch.Tensor], coeffs: torch.Tensor,
           mask: Optional[torch.Tensor] = None, seed: Optional[int] = None,
           offset: int = 0, coeffs2: Optional[torch.Tensor] = None,
           bias: bool = False):
    """Per-row affine combination of up to three tensors, plus noise, masked.

    ``out[r, j] = sum_k coeffs[r, k] inputs[k][r, j] + coeffs[r, K] xi[r, j]
    + coeffs[r, K+1]`` over the flattened tensors split into ``coeffs.shape[0]``
    equal rows; the noise column exists when ``seed`` is given, the constant
    column when ``bias``. Masked positions are 0 and their inputs are never
    read into the arithmetic. With ``coeffs2`` a second combination of the
    same loads is returned: ``(out, out2)``. The output has the dtype of
    ``inputs[0]``; math is float32 (float64 for float64 data).
    """
    inputs = _check_affine_args(inputs, coeffs, mask, seed, offset, coeffs2,
                                bias)
    xs, table, table2, kmask = _prepared(inputs, coeffs, coeffs2, mask)
    p = _primitives(inputs[0].device)
    fn = p.module.affine if _direct(*xs, table, table2) else p.affine
    out, out2 = fn(xs[0], xs[1], xs[2], table, table2, kmask,
                   -1 if seed is None else seed, offset, bool(bias),
                   inputs[0].dtype)
    return (out, out2) if coeffs2 is not None else out


def affine_sum(inputs: Sequence[torch.Tensor], coeffs: torch.Tensor,
               mask: Optional[torch.Tensor] = None, seed: Optional[int] = None,
               offset: int = 0, power: int = 2, bias: bool = False):
    """Per-row sums over valid elements of the affine combination of
    :func:`affine`, raised to ``power`` (1 or 2). Shape (rows,), float32
    (float64 for float64 data); deterministic (no atomics)."""
    if power not in (1, 2) or isinstance(power, bool):
        raise ValueError(f"power must be 1 or 2, got {power!r}")
    inputs = _check_affine_args(inputs, coeffs, mask, seed, offset, None, bias)
    xs, table, _, kmask = _prepared(inputs, coeffs, None, mask)
    p = _primitives(inputs[0].device)
    fn = p.module.affine_sum if _direct(*xs, table) else p.affine_sum
    return fn(xs[0], xs[1], xs[2], table, kmask, -1 if seed is None else seed,
              offset, int(power), bool(bias))


def affine_dots(inputs: Sequence[torch.Tensor], coeffs: torch.Tensor,
                mask: Optional[torch.Tensor] = None, seed: Optional[int] = None,
                offset: int = 0, bias: bool = False,
                weight: Union[None, str, torch.Tensor] = None) -> torch.Tensor:
    """Per row r and column j of the combination (the inputs, the noise when
    ``seed`` is given, 1 when ``bias``): the sum over valid elements of
    w * column_j, with w = 1 (``weight=None``), a tensor of the inputs' shape,
    or the combination itself (``weight="combination"``). Shape
    (rows, columns); these are the gradients of :func:`affine` and
    :func:`affine_sum` with respect to their coefficients. Not
    differentiable."""
    inputs = _check_affine_args(inputs, coeffs, mask, seed, offset, None, bias)
    if weight is None:
        kind, w = 0, None
    elif isinstance(weight, str):
        if weight != "combination":
            raise ValueError(f"weight must be None, a tensor or 'combination', "
                             f"got {weight!r}")
        kind, w = 2, None
    else:
        check_float_tensor("weight", weight)
        check_same_shapes(["inputs[0]", "weight"], [inputs[0], weight])
        kind, w = 1, weight.detach().contiguous()
    xs, table, _, kmask = _prepared([x.detach() for x in inputs],
                                    coeffs.detach(), None, mask)
    p = _primitives(inputs[0].device)
    fn = p.module.affine_dots if _direct() else p.affine_dots
    return fn(xs[0], xs[1], xs[2], w, table, kmask, -1 if seed is None else seed,
              offset, bool(bias), kind)


# ----------------------------------------------------------- diffusion ops
def _per_sample(name, value, latent: torch.Tensor) -> torch.Tensor:
    value = check_per_sample(name, value, latent.shape[0], latent)
    return value.to(coefficient_dtype(latent))


def _channel_vector(name, value, channels: int, like: torch.Tensor,
                    expected: str, accept):
    """A scalar or per-channel ``value`` as a (channels,) vector in the
    coefficient dtype; its values must satisfy ``accept`` (``expected``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        check_finite_number(name, value, expected, lambda v: bool(
            accept(torch.tensor(v, dtype=torch.float64))))
        return torch.full((channels,), float(value), device=like.device,
                          dtype=coefficient_dtype(like))
    check_float_tensor(name, value)
    check_same_device(name, value, like, "latent")
    check_values(name, value, expected, accept)
    if value.numel() == 1:
        return value.reshape(1).expand(channels).to(coefficient_dtype(like))
    if value.numel() != channels:
        raise ValueError(f"{name} must be a scalar or hold one value per channel "
                         f"(dim 1, size {channels}), got shape {tuple(value.shape)}")
    return value.reshape(channels).to(coefficient_dtype(like))


def _finite(t: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(t)


def _finite_positive(t: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(t) & (t > 0)


def diffuse(latent: torch.Tensor, gamma, seed: int,
            mask: Optional[torch.Tensor] = None, offset: int = 0,
            mean=None, std=None) -> torch.Tensor:
    """Noised latent z = alpha x + sigma eps with per-sample log-SNR ``gamma``.

    eps is noise[offset + i] of stream ``seed``, generated inside the op and
    never stored; :func:`weighted_loss` regenerates it. Masked positions are
    0. With ``mean``/``std`` (scalars or one value per channel, dim 1) the raw
    data is Gaussian-encoded on the fly: x = (latent - mean) / std; ``mean``
    must be finite and ``std`` finite and > 0 (values of CPU tensors and
    numbers are checked; see :func:`ddm_fast._validation.check_values`).
    """
    check_float_tensor("latent", latent, min_ndim=1)
    gamma = _per_sample("gamma", gamma, latent)
    check_seed("seed", seed)
    alpha, sigma = alpha_sigma(gamma)
    if mean is None and std is None:
        coeffs = torch.stack((alpha, sigma), dim=1)
        return affine([latent], coeffs, mask, seed, offset)
    if latent.ndim < 2:
        raise ValueError("latent must have a channel dimension (dim 1) for the "
                         f"fused encoding, got shape {tuple(latent.shape)}")
    channels = latent.shape[1]
    mean = _channel_vector("mean", 0.0 if mean is None else mean, channels,
                           latent, "finite", _finite)
    std = _channel_vector("std", 1.0 if std is None else std, channels, latent,
                          "finite and > 0", _finite_positive)
    # rows = (sample, channel): z = (alpha/std) raw + sigma eps - alpha mean/std
    scale = alpha[:, None] / std[None, :]
    coeffs = torch.stack((scale, sigma[:, None].expand_as(scale),
                          -scale * mean[None, :]), dim=-1).reshape(-1, 3)
    return affine([latent], coeffs, mask, seed, offset, bias=True)


def _sample_dims(x: torch.Tensor) -> Tuple[int, ...]:
    return tuple(range(1, x.ndim))


def weighted_loss(prediction: torch.Tensor, latent: torch.Tensor, seed: int,
                  target_latent, target_noise, sample_weight, loss_weight,
                  mask: Optional[torch.Tensor] = None, offset: int = 0
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The masked weighted squared error against the target f* = a x + c eps.

    With the per-sample vectors a = ``target_latent``, c = ``target_noise``,
    s = ``sample_weight`` and l = ``loss_weight`` (each shape (B,), a 0-d
    tensor or a number) and e_b = sum over the valid elements of sample b of
    (f - f*)^2:

    - ``loss = sum_b l_b e_b / (number of valid elements + 1e-9)``
    - ``per_sample[b] = s_b e_b / (valid elements of sample b + 1e-9)``

    eps is regenerated from (``seed``, ``offset``) exactly as :func:`diffuse`
    drew it. Differentiable in ``prediction``, ``latent`` and every vector.
    The diffusion loss (docs/math.md, "The diffusion loss") is this with
    a, c from the parameterization, s = lambda w and l = lambda w / p.
    """
    check_float_tensor("prediction", prediction, min_ndim=1)
    check_float_tensor("latent", latent, min_ndim=1)
    check_same_shapes(["prediction", "latent"], [prediction, latent])
    check_seed("seed", seed)
    a = _per_sample("target_latent", target_latent, latent)
    c = _per_sample("target_noise", target_noise, latent)
    s = _per_sample("sample_weight", sample_weight, latent)
    lw = _per_sample("loss_weight", loss_weight, latent)
    batch = latent.shape[0]
    coeffs = torch.stack((torch.ones_like(a), -a, -c), dim=1)
    sq_sums = affine_sum([prediction, latent], coeffs, mask, seed, offset, power=2)
    counts = mask_count(mask, latent.shape, _sample_dims(latent),
                        dtype=sq_sums.dtype, device=latent.device).reshape(batch)
    per_sample = s.to(sq_sums.dtype) * sq_sums / (counts + MASKED_MEAN_EPS)
    loss = (lw.to(sq_sums.dtype) * sq_sums).sum() / (counts.sum() + MASKED_MEAN_EPS)
    return loss, per_sample


def masked_mean(x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                dim=None) -> torch.Tensor:
    """Mean over the valid elements of ``x``; the count is that of the mask
    broadcast to ``x`` (plus 1e-9), so an all-masked reduction gives 0.

    ``dim``: None (everything) or any set of dimensions. Reductions over
    trailing dimensions (e.g. per sample, ``dim=(1, 2, 3)``) run through the
    fused :func:`affine_sum`; other dimension sets use plain PyTorch.
    """
    check_float_tensor("x", x)
    check_mask(mask, x, like_name="x")
    dims = reduce_dims(x.ndim, dim)
    trailing = dims == tuple(range(x.ndim - len(dims), x.ndim))
    if x.ndim == 0 or not dims or not trailing or x.numel() == 0:
        return masked_average_torch(x, mask, dim, MASKED_MEAN_EPS)
    keep_shape = x.shape[:x.ndim - len(dims)]
    rows = 1
    for s in keep_shape:
        rows *= s
    ones = torch.ones((rows, 1), dtype=coefficient_dtype(x), device=x.device)
    sums = affine_sum([x], ones, mask, power=1)
    counts = mask_count(mask, x.shape, dims, dtype=sums.dtype, device=x.device)
    out = sums.reshape(keep_shape) / (counts + MASKED_MEAN_EPS)
    return out.to(x.dtype)
