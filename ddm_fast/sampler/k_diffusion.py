"""Adapter running any k-diffusion-style sample function on a scheduler."""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, Optional

import torch

from .. import ops
from .._math import alpha_sigma
from .._validation import check_float_tensor
from ..denoiser import check_callable
from ..ops import coefficient_dtype
from ..seeds import draw_seed
from .base import BaseSampler

__all__ = ["KDiffusionSampler"]


def _parameters(func: Callable):
    try:
        return inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}


class KDiffusionSampler(BaseSampler):
    """Runs ``k_func(model, x, sigmas, extra_args=..., disable=..., **kwargs)``
    (k-diffusion's ``sample_*`` functions, or :mod:`ddm_fast.sampling`'s) in
    the exploding form x = z / alpha on the scheduler's grid
    sigma_tilde_k = exp(-gamma_k / 2), whose last value is replaced by 0 as
    in :class:`BaseSampler` (the final step returns x_hat). Extra keyword
    arguments of the constructor go to ``k_func`` (e.g. ``s_churn``,
    ``eta``); so do ``seed``, ``member_offset``, ``mask`` and ``callback``
    where ``k_func`` accepts them.

    The model handed to ``k_func`` is :meth:`denoise_step`; it masks the
    network input and x_hat, and the returned sample is masked. States
    inside a foreign ``k_func`` that adds noise are not masked between
    steps unless it accepts ``mask``.
    """

    def __init__(self, k_func: Callable, scheduler: Callable,
                 timesteps: int = 50,
                 denoising_network: Optional[Callable] = None,
                 pre_func: Optional[Callable] = None,
                 post_func: Optional[Callable] = None,
                 prior_sampler: Optional[Callable] = None,
                 param=None, gamma_min: Optional[float] = None,
                 gamma_max: Optional[float] = None, pbar: bool = True, seed: Optional[int] = None, **kwargs):
        check_callable("k_func", k_func, optional=False)
        k_params = _parameters(k_func)
        takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD
                        for p in k_params.values())
        forwarded = {name: value for name, value in kwargs.items()
                     if takes_any or name in k_params}
        ignored = {name: value for name, value in kwargs.items()
                   if name not in forwarded}
        super().__init__(scheduler=scheduler, timesteps=timesteps,
                         denoising_network=denoising_network,
                         pre_func=pre_func, post_func=post_func,
                         prior_sampler=prior_sampler, param=param,
                         gamma_min=gamma_min, gamma_max=gamma_max, pbar=pbar,
                         seed=seed, **ignored)
        if not self.zero_land:
            raise ValueError("zero_land=False is offered by the module "
                             "samplers; KDiffusionSampler masks through "
                             "k_func's mask argument")
        self.k_func = k_func
        self._k_params = k_params
        self.kwargs = forwarded  # handed on to k_func

    @property
    def needs_noise(self) -> bool:
        return "seed" in self._k_params

    def denoise_step(self, in_state: torch.Tensor, sigma_tilde,
                     mask: Optional[torch.Tensor] = None,
                     **conditioning) -> torch.Tensor:
        """The k-diffusion model: x_hat at the exploding state ``in_state``
        and per-sample ``sigma_tilde`` (B,) (or a scalar)."""
        check_float_tensor("in_state", in_state, min_ndim=1)
        sigma_tilde = self.per_sample_gamma("sigma_tilde", sigma_tilde,
                                            in_state)
        gamma = -2 * torch.log(sigma_tilde)
        alpha, _ = alpha_sigma(gamma)
        dtype = coefficient_dtype(in_state)
        z = ops.affine([in_state], alpha[:, None].to(dtype), mask)
        return self.denoiser(z, gamma, mask, **conditioning)

    @staticmethod
    def input_to_exploding(in_tensor: torch.Tensor, gamma) -> torch.Tensor:
        """ddm_dynamical's helper: the exploding state z / alpha(gamma)."""
        check_float_tensor("in_tensor", in_tensor)
        gamma = torch.as_tensor(gamma, device=in_tensor.device)
        alpha, _ = alpha_sigma(gamma.to(ops.coefficient_dtype(in_tensor)))
        return (in_tensor / alpha).to(in_tensor.dtype)

    def sigma_grid(self, n_steps: int, device=None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The last ``n_steps`` + 1 sigma_tilde of the grid, ending with 0."""
        gammas = self.gamma_grid(device, dtype)[-n_steps - 1:]
        sigmas = torch.exp(-gammas / 2)
        sigmas[-1] = 0.
        return sigmas.to(dtype)

    @torch.no_grad()
    def reconstruct(self, in_tensor: torch.Tensor,
                    n_steps: Optional[int] = None,
                    mask: Optional[torch.Tensor] = None,
                    callback: Optional[Callable[[Dict[str, Any]], None]] = None,
                    seed: Optional[int] = None, member_offset: int = 0,
                    **conditioning) -> torch.Tensor:
        """Denoise ``in_tensor`` (z at gamma_{timesteps - n_steps}) with
        ``k_func`` over the last ``n_steps`` steps; ``callback`` is
        k-diffusion's (dicts with x, i, sigma, sigma_hat, denoised)."""
        n_steps = self._check_reconstruct_args(in_tensor, n_steps, mask,
                                               callback, member_offset)
        sigma_dtype = in_tensor.dtype if in_tensor.dtype in (
            torch.float32, torch.float64) else torch.float32
        sigmas = self.sigma_grid(n_steps, in_tensor.device, sigma_dtype)
        gamma_start = self.gamma_grid(in_tensor.device, in_tensor.dtype)[
            self.timesteps - n_steps]
        alpha_start, _ = alpha_sigma(gamma_start)
        batch = in_tensor.shape[0]
        dtype = coefficient_dtype(in_tensor)
        x_e = ops.affine([in_tensor], (1 / alpha_start).expand(batch, 1).to(
            dtype), mask)
        kwargs = dict(self.kwargs)
        optional = {"seed": draw_seed(seed if seed is not None else self.seed)
                    if self.needs_noise else None,
                    "member_offset": member_offset, "mask": mask,
                    "callback": callback}
        for name, value in optional.items():
            if name in self._k_params and value is not None:
                kwargs.setdefault(name, value)
        model = functools.partial(self.denoise_step, mask=mask)
        out = self.k_func(model, x_e, sigmas, extra_args=dict(conditioning),
                          disable=None if self.pbar else True, **kwargs)
        ones = torch.ones((batch, 1), dtype=dtype, device=in_tensor.device)
        return ops.affine([out], ones, mask)
