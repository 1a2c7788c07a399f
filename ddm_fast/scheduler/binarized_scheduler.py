"""Adaptive schedule with a piecewise-constant density (Kingma & Gao 2023)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from .._validation import check_float_tensor, check_gamma_range, \
    check_positive_int
from .noise_scheduler import NoiseScheduler, _check_finite_number

__all__ = ["BinarizedScheduler"]


def _world_size(process_group) -> int:
    """Number of ranks to reduce over; 1 when not running distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


class BinarizedScheduler(NoiseScheduler):
    """The adaptive noise schedule of Kingma & Gao (2023), "Understanding
    Diffusion Objectives as the ELBO with Simple Data Augmentation".

    The density over gamma is piecewise constant on ``n_bins`` equal bins
    between the fixed ``gamma_limits``; bin k holds the value v_k (initially
    1). Its integral C(gamma) is piecewise linear through the knots
    (bin_limits[k], bin_integral[k]), and t -> gamma inverts C restricted to
    [gamma_min, gamma_max] (t = 0 maps to gamma_max; docs/math.md,
    "The adaptive (binarized) schedule"). Each training
    step, :meth:`update` moves every bin towards the mean per-sample loss
    statistic of the samples that fell into it, so the density follows
    where the loss is large.

    Parameters
    ----------
    n_bins : number of bins (>= 1).
    gamma_min, gamma_max : the truncated range, inside ``gamma_limits``.
    ema_rate : r in [0, 1); a bin hit by n samples keeps r^n of its value.
    gamma_limits : (low, high) fixed edges of the bins.
    learnable : whether gamma_min and gamma_max receive gradients.

    The statistics fed to :meth:`update` must be non-negative (a loss); the
    bin values and their integral are buffers, so ``state_dict`` and
    checkpoints carry the learnt schedule.
    """

    def __init__(self, n_bins: int = 100, gamma_min: float = -10.,
                 gamma_max: float = 10., ema_rate: float = 0.999,
                 gamma_limits: Sequence[float] = (-20., 20.),
                 learnable: bool = False):
        super().__init__(gamma_min=gamma_min, gamma_max=gamma_max,
                         learnable=learnable)
        self.n_bins = check_positive_int("n_bins", n_bins)
        ema_rate = _check_finite_number("ema_rate", ema_rate)
        if not 0 <= ema_rate < 1:
            raise ValueError(f"ema_rate must lie in [0, 1), got {ema_rate}")
        self.ema_rate = ema_rate
        if isinstance(gamma_limits, torch.Tensor):
            gamma_limits = gamma_limits.tolist()
        if not isinstance(gamma_limits, (tuple, list)) or \
                len(gamma_limits) != 2:
            raise TypeError("gamma_limits must be a pair (low, high), got "
                            f"{gamma_limits!r}")
        low = _check_finite_number("gamma_limits[0]", gamma_limits[0])
        high = _check_finite_number("gamma_limits[1]", gamma_limits[1])
        check_gamma_range(low, high, name_min="gamma_limits[0]",
                          name_max="gamma_limits[1]")
        range_min = float(self.gamma_min.detach())
        range_max = float(self.gamma_max.detach())
        if not low <= range_min < range_max <= high:
            raise ValueError(
                f"gamma_limits ({low}, {high}) must cover [gamma_min, "
                f"gamma_max] = [{range_min}, {range_max}]")
        self.gamma_limits = (low, high)
        self.bin_width = (high - low) / self.n_bins
        dtype = torch.get_default_dtype()
        self.register_buffer("bin_values", torch.ones(self.n_bins,
                                                      dtype=dtype))
        self.register_buffer("bin_integral", torch.zeros(self.n_bins + 1,
                                                         dtype=dtype))
        self._refresh_integral()

    # ------------------------------------------------------------ state
    def _edges(self, dtype: torch.dtype) -> torch.Tensor:
        """The n_bins + 1 bin edges, from the Python limits (rounded once,
        to ``dtype``: no float32 edges inside a float64 computation)."""
        low, high = self.gamma_limits
        return torch.linspace(low, high, self.n_bins + 1, dtype=dtype,
                              device=self.bin_values.device)

    @property
    def bin_limits(self) -> torch.Tensor:
        """The bin edges, in the dtype of the bin values."""
        return self._edges(self.bin_values.dtype)

    def _apply(self, fn, *args, **kwargs):
        # After .double(), .to(...): recompute the integral in the new dtype
        # from the values rather than keep a converted, rounded one.
        super()._apply(fn, *args, **kwargs)
        self._refresh_integral()
        return self

    @torch.no_grad()
    def _refresh_integral(self) -> None:
        """bin_integral[k] = sum_{j<k} v_j * bin_width (the CDF at the knots,
        unnormalised)."""
        self.bin_integral[0] = 0
        self.bin_integral[1:].copy_(
            torch.cumsum(self.bin_values * self.bin_width, dim=0))

    def _value_floor(self) -> float:
        """Smallest bin value kept: strictly positive, so the integral
        increases and the normalisation never vanishes, yet far below any
        meaningful statistic (and v * bin_width does not underflow)."""
        return torch.finfo(self.bin_values.dtype).tiny ** 0.5

    @torch.no_grad()
    def set_bin_values(self, values: torch.Tensor) -> None:
        """Replace the bin values (finite, non-negative, shape (n_bins,))
        and refresh the integral. A set-up call: it checks the values on the
        host."""
        check_float_tensor("values", values, min_ndim=1)
        if values.shape != self.bin_values.shape:
            raise ValueError(f"values must have shape ({self.n_bins},), got "
                             f"{tuple(values.shape)}")
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise ValueError("values must be finite and non-negative")
        self.bin_values.copy_(values.clamp_min(self._value_floor()))
        self._refresh_integral()

    # -------------------------------------------------------- the map T
    def _bin_of_gamma(self, gamma: torch.Tensor) -> torch.Tensor:
        """Bin index of each gamma; outside the limits, the edge bins."""
        limits = self._edges(gamma.dtype)
        index = torch.searchsorted(limits, gamma.contiguous(), right=True) - 1
        return index.clamp(0, self.n_bins - 1)

    def _bin_slopes(self, dtype: torch.dtype) -> torch.Tensor:
        """Increase of the integral over each bin (v_k * bin_width as
        stored, so everything below is consistent with bin_integral)."""
        integral = self.bin_integral.to(dtype)
        return integral[1:] - integral[:-1]

    def _integral(self, gamma: torch.Tensor) -> torch.Tensor:
        """C(gamma), linear inside each bin (extrapolated outside)."""
        index = self._bin_of_gamma(gamma)
        fraction = (gamma - self._edges(gamma.dtype)[index]) / \
            self.bin_width
        return self.bin_integral.to(gamma.dtype)[index] + \
            fraction * self._bin_slopes(gamma.dtype)[index]

    def _time_pair(self, gamma: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        total = self.bin_integral[-1].to(gamma.dtype)
        integral = self._integral(gamma)
        return (total - integral) / total, integral / total

    def _gamma_from_pair(self, time: torch.Tensor,
                         complement: torch.Tensor) -> torch.Tensor:
        integral_knots = self.bin_integral.to(time.dtype)
        integral = complement * integral_knots[-1]
        index = (torch.searchsorted(integral_knots, integral.contiguous(),
                                    right=True) - 1).clamp(0, self.n_bins - 1)
        slope = self._bin_slopes(time.dtype)[index]
        # A bin of zero value is a flat piece of C: map onto its left edge
        # (the where keeps 0/0 out of the values and the gradients).
        flat = slope <= 0
        fraction = torch.where(
            flat, torch.zeros_like(integral),
            (integral - integral_knots[index]) /
            torch.where(flat, torch.ones_like(slope), slope))
        return self._edges(time.dtype)[index] + \
            fraction * self.bin_width

    def _time_derivative(self, gamma: torch.Tensor) -> torch.Tensor:
        slopes = self._bin_slopes(gamma.dtype)
        total = self.bin_integral[-1].to(gamma.dtype)
        return slopes[self._bin_of_gamma(gamma)] / (self.bin_width * total)

    # ----------------------------------------------------------- update
    @torch.no_grad()
    def _bin_statistics(self, gamma: torch.Tensor, target: torch.Tensor
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(count, sum of target) per bin, in float64, on gamma's device."""
        index = self._bin_of_gamma(gamma.reshape(-1))
        counts = torch.zeros(self.n_bins, dtype=torch.float64,
                             device=gamma.device)
        sums = torch.zeros_like(counts)
        counts.index_add_(0, index, torch.ones_like(index, dtype=counts.dtype))
        sums.index_add_(0, index, target.reshape(-1).to(torch.float64))
        return counts, sums

    @torch.no_grad()
    def _apply_bin_statistics(self, counts: torch.Tensor,
                              sums: torch.Tensor) -> None:
        """v_k <- r^{n_k} v_k + (1 - r^{n_k}) sums_k / n_k for the (already
        reduced) per-bin counts n_k and sums; bins with n_k = 0 keep v_k."""
        keep = torch.pow(self.ema_rate, counts)
        means = sums / counts.clamp_min(1)
        values = keep * self.bin_values.to(torch.float64) + (1 - keep) * means
        self.bin_values.copy_(values.clamp_min(self._value_floor()))
        self._refresh_integral()

    @torch.no_grad()
    def update(self, gamma: torch.Tensor, target: torch.Tensor,
               process_group: Optional[object] = None) -> None:
        """EMA update of the bins from per-sample statistics ``target``
        (>= 0) observed at ``gamma`` (same shape); docs/math.md,
        "The adaptive (binarized) schedule".

        Under data parallelism (torch.distributed initialised with more than
        one rank in ``process_group``, default the world) the per-bin counts
        and sums are summed over the ranks first, so every rank ends with the
        same schedule. No host synchronisation.
        """
        super().update(gamma, target)
        self._check_input("gamma", gamma)
        if target.device != gamma.device:
            raise ValueError(f"target is on {target.device} but gamma is on "
                             f"{gamma.device}")
        counts, sums = self._bin_statistics(gamma, target)
        if _world_size(process_group) > 1:
            statistics = torch.stack((counts, sums))
            dist.all_reduce(statistics, op=dist.ReduceOp.SUM,
                            group=process_group)
            counts, sums = statistics[0], statistics[1]
        self._apply_bin_statistics(counts, sums)

    def extra_repr(self) -> str:
        return (f"n_bins={self.n_bins}, ema_rate={self.ema_rate:g}, "
                f"gamma_limits={self.gamma_limits}, " + super().extra_repr())
