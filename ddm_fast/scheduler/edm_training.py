"""EDM training schedule: EDM's log-normal noise level (Karras et al. 2022)."""
from __future__ import annotations

import math
from typing import Tuple

import torch

from .noise_scheduler import NoiseScheduler, _check_finite_number

__all__ = ["EDMTrainingScheduler"]


class EDMTrainingScheduler(NoiseScheduler):
    """gamma ~ N(gamma_mean, gamma_std^2) restricted to [gamma_min, gamma_max].

    EDM draws ln(sigma~) ~ N(P_mean, P_std^2) with P_mean = -1.2, P_std = 1.2;
    gamma = -2 ln(sigma~) makes that gamma ~ N(2.4, 2.4^2), the default here
    (ddm_dynamical's N(-3.82, 2^2) was not EDM's distribution).

    t~ is the upper tail probability, T(gamma) = Phi((mean - gamma) / std),
    so t~ = 0 maps to large gamma; the inverse takes Phi^{-1} of the smaller
    of t~ and 1 - t~ to stay accurate in both tails.
    """

    def __init__(self, gamma_mean: float = 2.4, gamma_std: float = 2.4,
                 gamma_min: float = -10., gamma_max: float = 10.,
                 learnable: bool = False, **kwargs):
        super().__init__(gamma_min=gamma_min, gamma_max=gamma_max,
                         learnable=learnable, **kwargs)
        gamma_mean = _check_finite_number("gamma_mean", gamma_mean)
        gamma_std = _check_finite_number("gamma_std", gamma_std)
        if gamma_std <= 0:
            raise ValueError(f"gamma_std must be positive, got {gamma_std}")
        # Python floats (not buffers): exact in float64 whatever the
        # module's dtype.
        self.gamma_mean = gamma_mean
        self.gamma_std = gamma_std

    # ddm_dynamical kept the centre and width as buffers; ddm_fast keeps
    # them as Python floats (exact in float64 whatever the module's dtype)
    # and saves none.
    _TOOLBOX_KEYS = ("gamma_mean", "gamma_std")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Accept ddm_dynamical's layout too: its ``gamma_mean`` and
        ``gamma_std`` buffers are taken out of the state_dict (so
        ``strict=True`` loads it) and set the distribution the toolbox
        sampled from. The toolbox's forward returned -Phi^{-1}(t~) of
        N(gamma_mean, gamma_std^2), so its gammas were distributed as
        N(-gamma_mean, gamma_std^2): the centre here becomes -gamma_mean
        (docs: README, "Differences from ddm_dynamical")."""
        toolbox = {key: state_dict.pop(prefix + key) for key in
                   self._TOOLBOX_KEYS if prefix + key in state_dict}
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if not toolbox:
            return
        if set(toolbox) != set(self._TOOLBOX_KEYS):
            error_msgs.append(
                f"{prefix}: a ddm_dynamical EDMTrainingScheduler state holds "
                f"both gamma_mean and gamma_std, got only {sorted(toolbox)}")
            return
        try:
            mean = _check_finite_number(f"{prefix}gamma_mean",
                                        toolbox["gamma_mean"])
            std = _check_finite_number(f"{prefix}gamma_std",
                                       toolbox["gamma_std"])
            if std <= 0:
                raise ValueError(f"{prefix}gamma_std must be positive, got "
                                 f"{std}")
        except (TypeError, ValueError) as error:
            error_msgs.append(str(error))
            return
        self.gamma_mean = -mean
        self.gamma_std = std

    def _time_pair(self, gamma: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.gamma_mean, self.gamma_std
        # Phi(x) = erfc(-x / sqrt 2) / 2 keeps its relative precision in the
        # lower tail, where torch.special.ndtr loses digits.
        scaled = (gamma - mean) / (std * math.sqrt(2))
        return 0.5 * torch.special.erfc(scaled), \
            0.5 * torch.special.erfc(-scaled)

    def _gamma_from_pair(self, time: torch.Tensor,
                         complement: torch.Tensor) -> torch.Tensor:
        mean, std = self.gamma_mean, self.gamma_std
        upper_half = time <= complement
        # One ndtri on a probability <= 1/2: no infinite branch (and no NaN
        # gradient) inside the where.
        quantile = torch.special.ndtri(torch.where(upper_half, time,
                                                   complement))
        return mean - std * torch.where(upper_half, quantile, -quantile)

    def _time_derivative(self, gamma: torch.Tensor) -> torch.Tensor:
        mean, std = self.gamma_mean, self.gamma_std
        standardised = (gamma - mean) / std
        return torch.exp(-0.5 * standardised * standardised) / \
            (std * math.sqrt(2 * math.pi))

    def extra_repr(self) -> str:
        return (f"gamma_mean={self.gamma_mean:g}, "
                f"gamma_std={self.gamma_std:g}, " + super().extra_repr())
