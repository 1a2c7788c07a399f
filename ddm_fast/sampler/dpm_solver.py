"""DPM-Solver++(2M) (Lu et al. 2022) on per-sample log-SNRs (docs/math.md,
"DPM-Solver++(2M)"): an adapter over
:func:`ddm_fast.sampler.methods.dpmpp_2m_loop`."""
from __future__ import annotations

from typing import Optional

from .._validation import check_same_shapes
from . import methods
from .base import BaseSampler, StepOutput

__all__ = ["DPMSolverPP2MSampler"]


class DPMSolverPP2MSampler(BaseSampler):
    """Second-order multistep DPM-Solver++ with lambda = gamma / 2:
    z_s = (sigma_s/sigma_t) z_t - alpha_s expm1(-h) D, h = lambda_s -
    lambda_t, D = x_hat on the first step and onto sigma_tilde = 0, else
    (1 + 1/(2r)) x_hat - 1/(2r) x_hat_prev, r = h_prev / h. One denoiser call
    and one fused op over (z, f, x_hat_prev) per step; the op's second output
    is x_hat, kept for the next step. Deterministic. Same constructor as
    :class:`BaseSampler`.
    """

    def run_loop(self, frame, state, levels, *, noise, mask, report):
        return methods.dpmpp_2m_loop(frame, state, levels, mask=mask,
                                     report=report, disable=not self.pbar)

    def step(self, z, gamma_t, gamma_s, mask=None, *, denoised_prev=None,
             gamma_prev=None, last: bool = False, seed: Optional[int] = None,
             offset: int = 0, return_denoised: bool = True,
             **conditioning) -> StepOutput:
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
        previous = None
        if denoised_prev is not None:
            check_same_shapes(["z", "denoised_prev"], [z, denoised_prev])
            previous = (denoised_prev,
                        self.per_sample_gamma("gamma_prev", gamma_prev, z) / 2)
        return methods.dpmpp_2m_step(
            self.frame(mask, conditioning), z, methods.Level(gamma_t / 2),
            methods.Level(gamma_s / 2), mask, previous=previous)
