"""Gaussian (standardising) encoder and the per-channel helpers it shares with
the decoders.

Mean and std are a scalar or one value per channel (dim 1 of the data).
They are stored as buffers of shape (K,), K = 1 or the number of channels,
so ``.to(device)`` moves them; the same vectors can be handed to the fused
:func:`ddm_fast.ops.diffuse`. They are configuration, as in ddm_dynamical
(whose encoder saved no state): the buffers are not persistent, so the
state_dict is the toolbox's (empty) one. See :func:`load_channel_buffers`
for the earlier ddm_fast layout that saved them.
"""
from __future__ import annotations

import numbers
from typing import Optional, Union

import torch

from .._compat import warn_ignored_kwargs
from .._validation import check_float_tensor, check_mask

__all__ = ["GaussianEncoder", "channel_parameter", "channel_view",
           "check_finite_values", "load_channel_buffers", "zero_masked"]


def channel_parameter(name: str, value: Union[float, torch.Tensor]
                      ) -> torch.Tensor:
    """A scalar or per-channel value as a 1-D tensor of shape (K,).

    Accepted: a real number, a 0-d tensor, or a float tensor holding K values
    along one axis, shaped (K,), (K, 1, ..., 1) or (1, K, 1, ..., 1).
    Called at construction only (it does not look at values).
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return torch.tensor([float(value)], dtype=torch.float32)
    check_float_tensor(name, value)
    shape = tuple(value.shape)
    if value.numel() < 1:
        raise ValueError(f"{name} must hold at least one value, got shape {shape}")
    per_channel_axis = len(shape) <= 1 or all(s == 1 for s in shape[1:]) or (
        shape[0] == 1 and all(s == 1 for s in shape[2:]))
    if not per_channel_axis:
        raise ValueError(
            f"{name} must be a scalar or hold one value per channel, shaped "
            f"(C,), (C, 1, ..., 1) or (1, C, 1, ..., 1); got shape {shape}")
    return value.detach().reshape(-1).clone()


def check_finite_values(name: str, value: torch.Tensor) -> torch.Tensor:
    """``value`` (a construction-time parameter) checked to be finite: a NaN
    mean or std would turn every encoded or decoded value NaN."""
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite, got "
                         f"{value.tolist() if value.numel() <= 8 else value}")
    return value


def load_channel_buffers(module: torch.nn.Module, names, state_dict,
                         prefix: str, error_msgs) -> None:
    """Accept the earlier ddm_fast layout that saved the non-persistent
    per-channel buffers ``names`` (mean, std): each one present in
    ``state_dict`` is taken out (so ``strict=True`` loads it) and copied into
    the buffer, so the module is the one that was saved. A layout without
    them (ddm_dynamical's, and ddm_fast's now) keeps the constructor's."""
    for name in names:
        value = state_dict.pop(prefix + name, None)
        if value is None:
            continue
        buffer = getattr(module, name)
        if not isinstance(value, torch.Tensor) or \
                value.numel() != buffer.numel():
            error_msgs.append(
                f"{prefix}{name}: expected {buffer.numel()} per-channel "
                f"value(s), got "
                f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
            continue
        with torch.no_grad():
            buffer.copy_(value.reshape(buffer.shape))


def check_channel_counts(names, vectors) -> int:
    """Number of channels K shared by per-channel vectors (1 broadcasts)."""
    counts = {v.numel() for v in vectors} - {1}
    if len(counts) > 1:
        shapes = ", ".join(f"{n}: {v.numel()}" for n, v in zip(names, vectors))
        raise ValueError(f"per-channel parameters disagree on the number of "
                         f"channels ({shapes})")
    return counts.pop() if counts else 1


def channel_view(value: torch.Tensor, like: torch.Tensor,
                 name: str = "parameter") -> torch.Tensor:
    """View a (K,) vector so that it broadcasts over dim 1 of ``like``."""
    if value.numel() == 1:
        return value.reshape((1,) * max(like.ndim, 1))
    if like.ndim < 2 or like.shape[1] != value.numel():
        raise ValueError(
            f"{name} holds {value.numel()} per-channel values but the data has "
            f"shape {tuple(like.shape)}; expected {value.numel()} channels in "
            f"dim 1")
    return value.reshape((1, -1) + (1,) * (like.ndim - 2))


def zero_masked(tensor: torch.Tensor, mask: Optional[torch.Tensor]
                ) -> torch.Tensor:
    """``tensor`` with masked positions (mask == 0) set to 0.

    A select, not a product, so that NaN or inf under land becomes 0 too.
    """
    if mask is None:
        return tensor
    return torch.where(mask != 0, tensor, tensor.new_zeros(()))


class GaussianEncoder(torch.nn.Module):
    """Standardise the data: x = (raw - mean) / (std + eps), masked to 0.

    ``mean`` and ``std`` (buffers of shape (K,)) are what
    :func:`ddm_fast.ops.diffuse` takes as ``mean=``/``std=`` to encode on the
    fly; ``eps`` (default 1e-9) only guards std = 0 channels and is far below
    float32 resolution for any std of order one. Extra keyword arguments are
    accepted and ignored, with a warning naming them.
    """

    def __init__(self, mean: Union[float, torch.Tensor] = 0.,
                 std: Union[float, torch.Tensor] = 1., eps: float = 1E-9,
                 **kwargs):
        super().__init__()
        warn_ignored_kwargs(self, kwargs)
        mean = check_finite_values("mean", channel_parameter("mean", mean))
        std = check_finite_values("std", channel_parameter("std", std))
        if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or \
                not eps >= 0 or eps == float("inf"):
            raise ValueError(f"eps must be a finite non-negative number, got {eps!r}")
        self.n_dims = check_channel_counts(("mean", "std"), (mean, std))
        # Construction-time value check (one sync at most, never per step).
        if not bool(((std >= 0) & (std + eps > 0)).all()):
            raise ValueError("std must be >= 0 everywhere, and std + eps > 0")
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.eps = float(eps)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        load_channel_buffers(self, ("mean", "std"), state_dict, prefix,
                             error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, in_tensor: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_float_tensor("in_tensor", in_tensor, min_ndim=1)
        check_mask(mask, in_tensor, like_name="in_tensor")
        mean = channel_view(self.mean, in_tensor, "mean").to(in_tensor.dtype)
        std = channel_view(self.std, in_tensor, "std").to(in_tensor.dtype)
        return zero_masked((in_tensor - mean) / (std + self.eps), mask)

    def extra_repr(self) -> str:
        return f"n_dims={self.n_dims}, eps={self.eps}"
