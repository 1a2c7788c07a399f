"""Small utilities: time sampling, log-SNR helpers and the masked average.

These are the reference (plain PyTorch) versions; :mod:`ddm_fast.ops` holds
the fused counterparts.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import torch

from .seeds import draw_seed  # noqa: F401  (re-exported: the one seed owner)

from ._masks import mask_count, masked_average_torch, reduce_dims as _reduce_dims  # noqa: F401
from ._math import alpha_sigma, sigma_tilde
from ._validation import (check_gamma_range, check_mask, check_seed,
                          check_tensor)
from .denoiser import DEFAULT_GAMMA_RANGE, normalize

__all__ = [
    "sample_time",
    "normalize_gamma",
    "masked_average",
    "alpha_sigma",
    "sigma_tilde",
    "mask_count",
    "draw_seed",
]


def sample_time(
        template_tensor: torch.Tensor,
        generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Stratified pseudo-times for a batch (docs/math.md,
    "Stratified pseudo-times").

    t_b = (u + b/B) mod 1 with a single u ~ U[0, 1): every batch covers [0, 1)
    evenly, which lowers the variance of the diffusion loss (Kingma et al.,
    2021). Returns shape (B, 1, ..., 1) matching ``template_tensor.ndim``, on
    its device, in its dtype (float32 for non-float templates); an empty
    batch (B = 0) gets an empty tensor (the generator still advances, so
    the streams after it do not depend on whether a batch was empty).

    ddm_dynamical drew u from a normal distribution; a uniform u is what the
    stratification needs (a normal u concentrates the offset near 0).
    """
    check_tensor("template_tensor", template_tensor, min_ndim=1)
    batch = template_tensor.shape[0]
    dtype = template_tensor.dtype if template_tensor.is_floating_point() \
        else torch.float32
    # Draw on the generator's device, then move: no host synchronisation.
    gen_device = generator.device if generator is not None else \
        template_tensor.device
    shift = torch.rand(1, generator=generator, device=gen_device,
                       dtype=torch.float64).to(template_tensor.device)
    grid = torch.arange(batch, device=template_tensor.device,
                        dtype=torch.float64) / batch
    times = torch.remainder(shift + grid, 1.0).to(dtype)
    return times.reshape((batch,) + (1,) * (template_tensor.ndim - 1))


def normalize_gamma(
        gamma: Any, gamma_min: Any = DEFAULT_GAMMA_RANGE[0],
        gamma_max: Any = DEFAULT_GAMMA_RANGE[1]
) -> Any:
    """Map gamma linearly so that gamma_min -> 0 and gamma_max -> 1.

    The default range is the library's one default,
    :data:`ddm_fast.denoiser.DEFAULT_GAMMA_RANGE` = (-10, 10) (ddm_dynamical's
    function defaulted to (-20, 20); its samplers to (-15, 15)). The
    network's conditioning is owned by :class:`ddm_fast.denoiser.Denoiser`;
    this is the bare formula. Bounds given as numbers must satisfy
    gamma_min < gamma_max (tensor bounds are not read, to avoid a sync).
    """
    if not isinstance(gamma_min, torch.Tensor) and \
            not isinstance(gamma_max, torch.Tensor):
        check_gamma_range(gamma_min, gamma_max)
    return normalize(gamma, gamma_min, gamma_max)


def masked_average(
        in_tensor: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        dim: Union[None, int, Sequence[int]] = None,
        eps: float = 1E-9,
) -> torch.Tensor:
    """Average of ``in_tensor`` over its valid (mask != 0) elements.

    The normaliser counts the elements of the mask *broadcast* to the data
    plus ``eps``; masked elements never enter the sum (they are selected out,
    so a NaN under land stays out of the result). An all-masked reduction
    returns 0, never NaN. Works for ``mask=None`` (a plain mean), unlike
    ddm_dynamical's version, which multiplied by ``None``.
    """
    check_tensor("in_tensor", in_tensor)
    mask = check_mask(mask, in_tensor, like_name="in_tensor")
    return masked_average_torch(in_tensor, mask, dim, eps)
