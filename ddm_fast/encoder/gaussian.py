"""Gaussian (standardising) encoder and the per-channel helpers it shares with
the decoders.

Mean and std are a scalar or one value per channel (dim 1 of the data).
They are stored as buffers of shape (K,), K = 1 or the number of channels,
so ``.to(device)`` moves them and ``state_dict`` carries them; the same
vectors can be handed to the fused :func:`ddm_fast.ops.diffuse`.
"""
from __future__ import annotations

import numbers
from typing import Optional, Union

import torch

from .._validation import check_float_tensor, check_mask

__all__ = ["GaussianEncoder", "channel_parameter", "channel_view",
           "zero_masked"]


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
    float32 resolution for any std of order one.
    """

    def __init__(self, mean: Union[float, torch.Tensor] = 0.,
                 std: Union[float, torch.Tensor] = 1., eps: float = 1E-9):
        super().__init__()
        mean = channel_parameter("mean", mean)
        std = channel_parameter("std", std)
        if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or eps < 0:
            raise ValueError(f"eps must be a non-negative number, got {eps!r}")
        self.n_dims = check_channel_counts(("mean", "std"), (mean, std))
        # Construction-time value check (one sync at most, never per step).
        if not bool(((std >= 0) & (std + eps > 0)).all()):
            raise ValueError("std must be >= 0 everywhere, and std + eps > 0")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.eps = float(eps)

    def forward(self, in_tensor: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_float_tensor("in_tensor", in_tensor, min_ndim=1)
        check_mask(mask, in_tensor, like_name="in_tensor")
        mean = channel_view(self.mean, in_tensor, "mean").to(in_tensor.dtype)
        std = channel_view(self.std, in_tensor, "std").to(in_tensor.dtype)
        return zero_masked((in_tensor - mean) / (std + self.eps), mask)

    def extra_repr(self) -> str:
        return f"n_dims={self.n_dims}, eps={self.eps}"
