"""The empirical optimal denoiser (docs/math.md, "The optimal denoiser";
Karras et al., 2022, eq. 57).

For training latents x_1..x_N and a noised z at log-SNR gamma, with
x_e = z / alpha and sigma_tilde^2 = exp(-gamma):

    pi_i  = softmax_i( -|| m * (x_e - x_i) ||^2 / (2 sigma_tilde^2) )
    x_hat = sum_i pi_i x_i,          eps_hat = (z - alpha x_hat) / sigma.

The sum over the training set is streamed in chunks with an online
log-sum-exp (running max, running normaliser, running weighted sum), so the
memory is O(B D + chunk D + B chunk) and a B x N x D tensor never exists.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple

import torch

from ._validation import (check_float_tensor, check_gamma_range, check_mask,
                          check_per_sample, check_positive_int,
                          check_same_device)
from .denoiser import DEFAULT_GAMMA_RANGE
from .utils import alpha_sigma

__all__ = ["OptimalModel"]

# exp(gamma) must stay finite in float32; beyond |gamma| = 60 the softmax is
# already one-hot / uniform for any data the model can hold.
_GAMMA_CLAMP = 60.0


def _normalise_dims(dims, sample_ndim: int) -> Tuple[int, ...]:
    """``dims`` (indices into the input (B, *sample)) as sample axes 0..S-1."""
    if isinstance(dims, int) and not isinstance(dims, bool):
        dims = (dims,)
    try:
        dims = tuple(dims)
    except TypeError:
        raise TypeError(f"dims must be an int or a sequence of ints, got "
                        f"{type(dims).__name__}") from None
    if not dims or any(isinstance(d, bool) or not isinstance(d, int)
                       for d in dims):
        raise TypeError(f"dims must be a non-empty sequence of ints, got {dims}")
    axes = []
    for d in dims:
        # Negative: counted from the end of a sample; positive: input axis
        # (axis 0 is the batch and cannot be reduced over).
        axis = d + sample_ndim if d < 0 else d - 1
        if not 0 <= axis < sample_ndim:
            raise ValueError(
                f"dims entry {d} does not name a sample axis of an input with "
                f"{sample_ndim} sample dimension(s) (valid: -{sample_ndim}..-1 "
                f"or 1..{sample_ndim})")
        axes.append(axis)
    if len(set(axes)) != len(axes):
        raise ValueError(f"dims names an axis twice: {dims}")
    return tuple(sorted(axes))


class OptimalModel(torch.nn.Module):
    """Empirical optimal denoiser over ``training_data`` of shape (N, *sample).

    ``dims``: the sample axes over which the distance runs (toolbox default:
    the last three). Other sample axes are independent groups, each with its
    own softmax weights. ``chunk_size``: training samples per streamed chunk.
    Computation is in float64 for float64 data, float32 otherwise. The
    training data is a non-persistent buffer: ``.to(device)`` moves it, the
    state_dict does not carry it.
    """

    def __init__(self, training_data: torch.Tensor,
                 gamma_min: Optional[float] = None,
                 gamma_max: Optional[float] = None,
                 dims: Iterable = (-3, -2, -1),
                 chunk_size: int = 1024) -> None:
        super().__init__()
        check_float_tensor("training_data", training_data, min_ndim=2)
        if training_data.shape[0] < 1:
            raise ValueError("training_data must hold at least one sample in "
                             "dim 0, got shape "
                             f"{tuple(training_data.shape)}")
        if gamma_min is None and gamma_max is None:
            gamma_min, gamma_max = DEFAULT_GAMMA_RANGE
        elif gamma_min is None or gamma_max is None:
            raise ValueError("give gamma_min and gamma_max together (or "
                             "neither, for the library default range)")
        self.gamma_min, self.gamma_max = check_gamma_range(gamma_min, gamma_max)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.sample_shape = tuple(training_data.shape[1:])
        sample_ndim = len(self.sample_shape)
        self.dims = _normalise_dims(dims, sample_ndim)
        self._group_axes = tuple(a for a in range(sample_ndim)
                                 if a not in self.dims)
        # Layout (G, N, D): groups first, distance axes flattened last, so a
        # chunk is a strided slice and each step is a batched matmul over G.
        self._permutation = self._group_axes + self.dims
        self._permuted_shape = tuple(self.sample_shape[a]
                                     for a in self._permutation)
        self.n_groups = math.prod(self.sample_shape[a] for a in self._group_axes)
        self.n_features = math.prod(self.sample_shape[a] for a in self.dims)
        n_samples = training_data.shape[0]
        # Land in real data is often NaN: keep it out of every product (a
        # NaN times a zero weight is still NaN); such data needs a mask.
        finite = torch.isfinite(training_data)
        self._has_nonfinite = not bool(finite.all())
        training_data = torch.where(finite, training_data,
                                    training_data.new_zeros(()))
        grouped = training_data.detach().permute(
            (0,) + tuple(a + 1 for a in self._permutation)
        ).reshape(n_samples, self.n_groups, self.n_features)
        self.register_buffer("training_data",
                             grouped.transpose(0, 1).contiguous(),
                             persistent=False)

    @property
    def ddm_fast_gamma_range(self):
        """The range that maps ``normalized_gamma`` back to gamma in
        :meth:`forward`: a :class:`ddm_fast.denoiser.Denoiser` around this
        model adopts it (see :mod:`ddm_fast.denoiser`)."""
        return (self.gamma_min, self.gamma_max)

    @property
    def n_samples(self) -> int:
        return self.training_data.shape[1]

    # ------------------------------------------------------------ layout
    def _to_groups(self, tensor: torch.Tensor) -> torch.Tensor:
        """(B, *sample) -> (G, B, D)."""
        batch = tensor.shape[0]
        permuted = tensor.permute((0,) + tuple(a + 1 for a in self._permutation))
        return permuted.reshape(batch, self.n_groups, self.n_features
                                ).transpose(0, 1)

    def _from_groups(self, tensor: torch.Tensor) -> torch.Tensor:
        """(G, B, D) -> (B, *sample)."""
        batch = tensor.shape[1]
        permuted = tensor.transpose(0, 1).reshape((batch,) + self._permuted_shape)
        inverse = [0] * (len(self._permutation) + 1)
        for position, axis in enumerate(self._permutation):
            inverse[axis + 1] = position + 1
        return permuted.permute(inverse)

    def _check_input(self, in_tensor: torch.Tensor, mask) -> None:
        check_float_tensor("in_tensor", in_tensor, min_ndim=1)
        if tuple(in_tensor.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"in_tensor must have shape (B, *{self.sample_shape}) to match "
                f"the trailing shape of training_data, got "
                f"{tuple(in_tensor.shape)}")
        check_same_device("in_tensor", in_tensor, self.training_data,
                          "training_data")
        check_mask(mask, in_tensor, like_name="in_tensor")

    # ------------------------------------------------------------ core
    def denoise(self, z: torch.Tensor, gamma,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Optimal x_hat for noised ``z`` (B, *sample) at per-sample log-SNR
        ``gamma`` ((B,), (B, 1, ...) or a scalar). Masked points take no part
        in the distance and are 0 in the output."""
        self._check_input(z, mask)
        batch = z.shape[0]
        compute = torch.float64 if self.training_data.dtype == torch.float64 \
            or z.dtype == torch.float64 else torch.float32
        gamma = check_per_sample("gamma", gamma, batch, z).to(compute)
        gamma = gamma.clamp(-_GAMMA_CLAMP, _GAMMA_CLAMP)
        alpha, _ = alpha_sigma(gamma)
        view = (batch,) + (1,) * len(self.sample_shape)
        if mask is None and self._has_nonfinite:
            raise ValueError("training_data holds NaN or Inf: give the mask "
                             "that covers them (land)")
        out_dtype = z.dtype
        z = z.to(compute)
        if mask is not None:  # selected, not multiplied: NaN under land
            z = torch.where(mask != 0, z, z.new_zeros(()))
        exploded = z / alpha.reshape(view)
        # 1 / (2 sigma_tilde^2) = exp(gamma) / 2, per sample: (1, B, 1).
        precision = (0.5 * torch.exp(gamma)).reshape(1, batch, 1)

        if mask is None:
            valid = None
            query = self._to_groups(exploded)                    # (G, B, D)
        else:
            valid_full = (mask != 0).to(compute)
            valid_full = valid_full.reshape(
                (1,) * (z.ndim - valid_full.ndim) + tuple(valid_full.shape))
            # Keep the mask's own batch size (1 for a shared land mask).
            valid_full = valid_full.expand(
                (valid_full.shape[0],) + self.sample_shape)
            valid = self._to_groups(valid_full)                  # (G, Bm, D)
            query = self._to_groups(exploded) * valid

        running_max = torch.full((self.n_groups, batch, 1), -math.inf,
                                 dtype=compute, device=z.device)
        normaliser = torch.zeros_like(running_max)
        weighted_sum = torch.zeros((self.n_groups, batch, self.n_features),
                                   dtype=compute, device=z.device)
        for start in range(0, self.n_samples, self.chunk_size):
            chunk = self.training_data[:, start:start + self.chunk_size]
            chunk = chunk.to(compute)                            # (G, n, D)
            # -||m(x_e - x_i)||^2 / (2 s^2) up to a per-(g, b) constant, which
            # the softmax ignores: (2 <m x_e, x_i> - <m, x_i^2>) / (2 s^2).
            # Dropping ||m x_e||^2 avoids the worst cancellation (x_e is
            # large at low gamma); no distance is formed, so nothing to clamp.
            cross = torch.matmul(query, chunk.transpose(1, 2))  # (G, B, n)
            if valid is None:
                own = chunk.square().sum(dim=-1).unsqueeze(1)    # (G, 1, n)
            else:
                own = torch.matmul(valid, chunk.square().transpose(1, 2))
            logits = (2 * cross - own) * precision
            new_max = torch.maximum(running_max,
                                    logits.amax(dim=-1, keepdim=True))
            rescale = torch.exp(running_max - new_max)           # 0 at start
            weights = torch.exp(logits - new_max)                # (G, B, n)
            normaliser = normaliser * rescale + weights.sum(dim=-1, keepdim=True)
            weighted_sum = weighted_sum * rescale + torch.matmul(weights, chunk)
            running_max = new_max
        denoised = self._from_groups(weighted_sum / normaliser).to(out_dtype)
        if mask is not None:
            denoised = torch.where(mask != 0, denoised, denoised.new_zeros(()))
        return denoised

    def optimal_denoiser(self, state: torch.Tensor, var: torch.Tensor,
                         mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Toolbox name: x_hat for an exploded ``state`` (= x_e) at variance
        ``var`` = sigma_tilde^2 (scalar or one per sample)."""
        check_float_tensor("state", state, min_ndim=1)
        var = check_per_sample("var", var, state.shape[0], state)
        gamma = -torch.log(var.to(torch.float64))
        alpha, _ = alpha_sigma(gamma)
        view = (state.shape[0],) + (1,) * (state.ndim - 1)
        return self.denoise((state * alpha.reshape(view)).to(state.dtype),
                            gamma.to(state.dtype), mask)

    def forward(self, in_tensor: torch.Tensor, normalized_gamma,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Implied noise eps_hat = (z - alpha x_hat) / sigma for noised
        ``in_tensor`` at per-sample ``normalized_gamma`` in [0, 1]
        (mapped linearly to [gamma_min, gamma_max]); masked points are 0."""
        self._check_input(in_tensor, mask)
        batch = in_tensor.shape[0]
        normalized_gamma = check_per_sample("normalized_gamma", normalized_gamma,
                                            batch, in_tensor)
        compute = torch.float64 if in_tensor.dtype == torch.float64 \
            else torch.float32
        gamma = normalized_gamma.to(compute) * (self.gamma_max - self.gamma_min) \
            + self.gamma_min
        denoised = self.denoise(in_tensor, gamma, mask)
        alpha, sigma = alpha_sigma(gamma)
        view = (batch,) + (1,) * len(self.sample_shape)
        noised = in_tensor.to(compute)
        if mask is not None:
            noised = torch.where(mask != 0, noised, noised.new_zeros(()))
        noise = (noised - alpha.reshape(view) * denoised) \
            / sigma.reshape(view)
        noise = noise.to(in_tensor.dtype)
        if mask is not None:
            noise = torch.where(mask != 0, noise, noise.new_zeros(()))
        return noise

    def extra_repr(self) -> str:
        return (f"n_samples={self.n_samples}, sample_shape={self.sample_shape}, "
                f"dims={self.dims}, gamma_min={self.gamma_min}, "
                f"gamma_max={self.gamma_max}, chunk_size={self.chunk_size}")
