"""Argument checks shared by every public callable.

Each check raises ``TypeError`` (wrong kind of object or dtype) or
``ValueError`` (wrong shape, range, device) with a message that names the
argument and says what was expected. None of them synchronises with a GPU:
they look at shapes, dtypes and devices, and at values only of Python
numbers and of CPU tensors (:func:`check_values`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

__all__ = [
    "check_tensor",
    "check_float_tensor",
    "check_mask",
    "check_per_sample",
    "check_gamma_range",
    "check_positive_int",
    "check_finite_number",
    "check_values",
]

_MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32,
                torch.int64, torch.float16, torch.bfloat16, torch.float32,
                torch.float64)


def check_tensor(name: str, value, *, min_ndim: int = 0) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(value).__name__}"
        )
    if value.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s), got shape "
            f"{tuple(value.shape)}"
        )
    return value


def check_float_tensor(name: str, value, *, min_ndim: int = 0) -> torch.Tensor:
    check_tensor(name, value, min_ndim=min_ndim)
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, "
            f"float32 or float64), got {value.dtype}"
        )
    return value


def check_same_device(name: str, value: torch.Tensor, like: torch.Tensor,
                      like_name: str) -> None:
    if value.device != like.device:
        raise ValueError(
            f"{name} is on {value.device} but {like_name} is on {like.device}; "
            f"expected both on the same device"
        )


def check_mask(mask, like: torch.Tensor, *, name: str = "mask",
               like_name: str = "the data") -> Optional[torch.Tensor]:
    """Validate a mask (1 = valid, 0 = masked) against ``like``.

    Bool, integer and float masks are accepted; the mask must broadcast to
    ``like.shape`` without growing it. The mask is returned unchanged (not
    expanded): callers keep its small broadcast shape.
    """
    if mask is None:
        return None
    check_tensor(name, mask)
    if mask.dtype not in _MASK_DTYPES:
        raise TypeError(
            f"{name} must be bool, integer or floating point, got {mask.dtype}"
        )
    check_same_device(name, mask, like, like_name)
    try:
        shape = torch.broadcast_shapes(mask.shape, like.shape)
    except RuntimeError:
        shape = None
    if shape != like.shape:
        raise ValueError(
            f"{name} of shape {tuple(mask.shape)} does not broadcast to "
            f"{like_name} of shape {tuple(like.shape)}; expected e.g. "
            f"(1, 1, H, W), (B, 1, H, W) or the full shape"
        )
    return mask


def check_per_sample(name: str, value, batch_size: int, like: torch.Tensor,
                     *, allow_scalar: bool = True) -> torch.Tensor:
    """Return a per-sample quantity as a flat vector of length ``batch_size``.

    Accepted: a Python number or 0-d tensor (shared by the batch, if
    ``allow_scalar``), shape (B,), or (B, 1, ..., 1).
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not allow_scalar:
            raise TypeError(f"{name} must be a tensor of shape ({batch_size},)")
        return torch.full((batch_size,), float(value), device=like.device,
                          dtype=torch.float32)
    check_tensor(name, value)
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, "
                        f"got {value.dtype}")
    check_same_device(name, value, like, "the data")
    if value.ndim == 0 and allow_scalar:
        return value.reshape(1).expand(batch_size)
    flat = value.reshape(-1) if value.numel() == batch_size else None
    if flat is None or (value.ndim > 0 and value.shape[0] != batch_size) or \
            any(s != 1 for s in value.shape[1:]):
        raise ValueError(
            f"{name} must hold one value per sample: shape ({batch_size},) "
            f"or ({batch_size}, 1, ...), got {tuple(value.shape)}"
        )
    return flat


def check_gamma_range(gamma_min, gamma_max, *, name_min: str = "gamma_min",
                      name_max: str = "gamma_max") -> Tuple[float, float]:
    lo = float(gamma_min)
    hi = float(gamma_max)
    if not (lo == lo and hi == hi):
        raise ValueError(f"{name_min} and {name_max} must not be NaN")
    if not lo < hi:
        raise ValueError(
            f"{name_min} must be smaller than {name_max} (log-SNR range "
            f"[{name_min}, {name_max}]), got {name_min}={lo}, {name_max}={hi}"
        )
    return lo, hi


def check_positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_seed(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be a Python int in [0, 2**63), got "
            f"{type(value).__name__}"
        )
    if not 0 <= value < 2 ** 63:
        raise ValueError(f"{name} must lie in [0, 2**63), got {value}")
    return value


def check_same_shapes(names: Sequence[str], tensors: Sequence[torch.Tensor]):
    ref = tensors[0]
    for n, t in zip(names[1:], tensors[1:]):
        if t.shape != ref.shape:
            raise ValueError(
                f"{n} must have the shape of {names[0]} {tuple(ref.shape)}, "
                f"got {tuple(t.shape)}"
            )
        check_same_device(n, t, ref, names[0])


def check_finite_number(name: str, value, expected: str = "a finite number",
                        accept=None) -> float:
    """``value`` as a float: a real Python number (or 0-d tensor), finite,
    and satisfying ``accept`` when given; else an error naming ``name``."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and \
            not value.is_complex() and value.dtype != torch.bool:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {expected}, got "
                        f"{type(value).__name__}")
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")) or \
            (accept is not None and not accept(number)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def check_values(name: str, value, expected: str, accept) -> None:
    """Check the values of a tensor or number: ``accept(tensor)`` must be
    all true (e.g. finite and positive), else a ``ValueError`` naming
    ``name`` and ``expected``.

    Reading a GPU tensor's values would synchronise the host with the
    device on every call, so the values of tensors on an accelerator (or
    under ``torch.compile``) are not read; a non-finite result from them is
    stopped by the Trainer's per-step check instead."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value), dtype=torch.float64)
    if not isinstance(value, torch.Tensor) or value.device.type != "cpu" or \
            torch.compiler.is_compiling() or value.numel() == 0:
        return
    good = accept(value.detach())
    if not bool(good.all()):
        bad = value.detach().reshape(-1)[~good.reshape(-1)][:3].tolist()
        raise ValueError(f"{name} must be {expected}; got {bad} among its values")
