"""DPM-Solver++(2M) (Lu et al. 2022) on per-sample log-SNRs (docs/math.md,
"DPM-Solver++(2M)")."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import ops
from .._validation import check_same_shapes
from ..ops import coefficient_dtype
from ..sampling import dpmpp_2m_coefficients
from ..utils import alpha_sigma
from .base import BaseSampler, StepOutput, col, unit_rows

__all__ = ["DPMSolverPP2MSampler"]


class DPMSolverPP2MSampler(BaseSampler):
    """Second-order multistep DPM-Solver++ with lambda = gamma / 2:
    z_s = (sigma_s/sigma_t) z_t - alpha_s expm1(-h) D, h = lambda_s -
    lambda_t, D = x_hat on the first step and onto sigma_tilde = 0, else
    (1 + 1/(2r)) x_hat - 1/(2r) x_hat_prev, r = h_prev / h. One denoiser call
    and one fused op over (z, f, x_hat_prev) per step; the op's second output
    is x_hat, kept for the next step. Deterministic.
    """

    def __init__(self, scheduler: Callable, timesteps: int = 50,
                 denoising_network: Optional[Callable] = None,
                 pre_func: Optional[Callable] = None,
                 post_func: Optional[Callable] = None,
                 prior_sampler: Optional[Callable] = None,
                 param=None, gamma_min: float = -15., gamma_max: float = 15.,
                 pbar: bool = True, seed: Optional[int] = None, **kwargs):
        super().__init__(scheduler=scheduler, timesteps=timesteps,
                         denoising_network=denoising_network,
                         pre_func=pre_func, post_func=post_func,
                         prior_sampler=prior_sampler, param=param,
                         gamma_min=gamma_min, gamma_max=gamma_max, pbar=pbar,
                         seed=seed, **kwargs)

    def _loop_step(self, z, gamma_t, gamma_s, *, mask, last, seed, offset,
                   return_denoised, n_steps, memory, conditioning):
        z_s, denoised = self.step(
            z, gamma_t, gamma_s, mask,
            denoised_prev=memory.get("denoised"),
            gamma_prev=memory.get("gamma"), **conditioning)
        memory["denoised"], memory["gamma"] = denoised, gamma_t
        return z_s, denoised

    def step(self, z: torch.Tensor, gamma_t, gamma_s,
             mask: Optional[torch.Tensor] = None, *,
             denoised_prev: Optional[torch.Tensor] = None, gamma_prev=None,
             last: bool = False, seed: Optional[int] = None, offset: int = 0,
             return_denoised: bool = True, **conditioning) -> StepOutput:
        """One step gamma_t -> gamma_s of per-sample (B,) log-SNRs, first
        order without ``denoised_prev`` (x_hat of the previous step, at
        ``gamma_prev``), second order with it. Returns (z_s, x_hat): pass
        x_hat and gamma_t to the next step. ``last``, ``seed``, ``offset``
        and ``return_denoised`` exist for a uniform signature; unused.
        """
        gamma_t, gamma_s = self.check_step_args(z, gamma_t, gamma_s, mask)
        if (denoised_prev is None) != (gamma_prev is None):
            raise ValueError("denoised_prev and gamma_prev must be given "
                             "together (both None on the first step)")
        inputs = [z]
        lam_prev = None
        if denoised_prev is not None:
            check_same_shapes(["z", "denoised_prev"], [z, denoised_prev])
            lam_prev = self.per_sample_gamma("gamma_prev", gamma_prev, z) / 2
        prediction = self.estimate_prediction(z, gamma_t, mask, **conditioning)
        inputs.append(prediction)
        if denoised_prev is not None:
            inputs.append(denoised_prev)
        p, q = self.param.denoise_coefficients(gamma_t)
        alpha_t, _ = alpha_sigma(gamma_t)
        alpha_s, _ = alpha_sigma(gamma_s)
        coeffs = dpmpp_2m_coefficients(gamma_t / 2, gamma_s / 2, lam_prev)
        # rows over (z, f, x_hat_prev); the exploding state is z / alpha_t
        units = unit_rows(z.shape[0], 3, gamma_t)
        denoised = col(p) * units[0] + col(q) * units[1]
        z_s = col(alpha_s) * (coeffs[:, :1] * units[0] / col(alpha_t)
                              + coeffs[:, 1:2] * denoised)
        if lam_prev is not None:
            z_s = z_s + col(alpha_s) * coeffs[:, 2:] * units[2]
        n = len(inputs)
        dtype = coefficient_dtype(z)
        return ops.affine(inputs, z_s[:, :n].to(dtype), mask,
                          coeffs2=denoised[:, :n].to(dtype))
