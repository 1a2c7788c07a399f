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

    The statistics fed to :meth:`update` must be non-negative (a loss);
    non-finite ones (and NaN gammas) are skipped. The state_dict holds
    ddm_dynamical's buffers under its names: ``bin_limits`` (the n_bins + 1
    edges), ``dx`` (the bin width), ``bin_values`` and ``bin_integral``
    (bin_integral[k] = v_0 + ... + v_{k-1}, in units of bins, as the toolbox
    kept it), so a toolbox checkpoint loads with ``strict=True`` and gives
    the same schedule, and a ddm_fast checkpoint loads back bitwise.
    On loading, the edges are taken from ``bin_limits`` and the integral is
    recomputed from the values.
    """

    def __init__(self, n_bins: int = 100, gamma_min: float = -10.,
                 gamma_max: float = 10., ema_rate: float = 0.999,
                 gamma_limits: Sequence[float] = (-20., 20.),
                 learnable: bool = False, **kwargs):
        super().__init__(gamma_min=gamma_min, gamma_max=gamma_max,
                         learnable=learnable, **kwargs)
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
        self._set_limits(low, high)
        dtype = torch.get_default_dtype()
        # ddm_dynamical's buffers (kept for its checkpoints; the computations
        # below use the Python limits, exact in any dtype).
        self.register_buffer("bin_limits", self._edges(dtype, "cpu"))
        self.register_buffer("dx", self.bin_limits[1] - self.bin_limits[0])
        self.register_buffer("bin_values", torch.ones(self.n_bins,
                                                      dtype=dtype))
        self.register_buffer("bin_integral", torch.zeros(self.n_bins + 1,
                                                         dtype=dtype))
        self._refresh_integral()

    # ------------------------------------------------------------ state
    def _set_limits(self, low: float, high: float) -> None:
        self.gamma_limits = (low, high)
        self.bin_width = (high - low) / self.n_bins

    def _edges(self, dtype: torch.dtype, device=None) -> torch.Tensor:
        """The n_bins + 1 bin edges, from the Python limits (rounded once,
        to ``dtype``: no float32 edges inside a float64 computation)."""
        low, high = self.gamma_limits
        if device is None:
            device = self.bin_values.device
        return torch.linspace(low, high, self.n_bins + 1, dtype=dtype,
                              device=device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if error_msgs:
            return
        with torch.no_grad():
            # Adopt the loaded edges (a checkpoint may come from other
            # gamma_limits than the constructor's), then rebuild the integral
            # from the values: the toolbox's and ours agree in layout, and
            # recomputing gives a ddm_fast checkpoint's integral bitwise.
            edges = self.bin_limits.detach().to("cpu", torch.float64)
            low, high = float(edges[0]), float(edges[-1])
            steps = edges[1:] - edges[:-1]
            if not (high > low and bool(torch.allclose(
                    steps, steps.mean().expand_as(steps), rtol=1e-4,
                    atol=1e-6 * (high - low)))):
                error_msgs.append(
                    f"{prefix}bin_limits must hold n_bins + 1 increasing, "
                    f"equally spaced edges, got {edges.tolist()[:4]}...")
                return
            self._set_limits(low, high)
            self._refresh_integral()

    def _apply(self, fn, *args, **kwargs):
        # After .double(), .to(...): recompute the integral and the edges in
        # the new dtype rather than keep converted, rounded ones.
        super()._apply(fn, *args, **kwargs)
        with torch.no_grad():
            edges = self._edges(self.bin_limits.dtype, self.bin_limits.device)
            self.bin_limits.copy_(edges)
            self.dx.copy_(edges[1] - edges[0])
        self._refresh_integral()
        return self

    @torch.no_grad()
    def _refresh_integral(self) -> None:
        """bin_integral[k] = sum_{j<k} v_j (the CDF at the knots,
        unnormalised, in units of bins as in ddm_dynamical: multiply by
        bin_width for the integral over gamma)."""
        self.bin_integral[0] = 0
        self.bin_integral[1:].copy_(torch.cumsum(self.bin_values, dim=0))

    def _value_floor(self) -> float:
        """Smallest bin value kept: strictly positive, so the integral
        increases and the normalisation never vanishes, yet far below any
        meaningful statistic (and the cumulative sums stay increasing)."""
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
        """Increase of the integral over each bin (v_k as stored, so
        everything below is consistent with bin_integral)."""
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
        return slopes[self._density_bin(gamma)] / (self.bin_width * total)

    def _density_bin(self, gamma: torch.Tensor) -> torch.Tensor:
        """The bin whose value is the density at ``gamma``: the bin to the
        right of an edge (right-continuous), except at and above the closed
        upper end gamma_max, where it is the bin to the left. Without that
        exception, gamma_max on a bin edge (the default 10 on bins over
        (-20, 20)) read the bin above the truncated range."""
        at_or_above_max = gamma >= self._gamma_bounds(gamma)[1]
        limits = self._edges(gamma.dtype)
        left_of_edge = (torch.searchsorted(limits, gamma.contiguous()) - 1
                        ).clamp(0, self.n_bins - 1)
        return torch.where(at_or_above_max, left_of_edge,
                           self._bin_of_gamma(gamma))

    # ------------------------------------------ ddm_dynamical's methods
    def bin_search(self, value: torch.Tensor, search_in: torch.Tensor
                   ) -> torch.Tensor:
        """Index k of the interval [search_in[k], search_in[k+1]) holding
        ``value``, clamped to [0, n_bins - 1] (ddm_dynamical's helper)."""
        check_float_tensor("value", value)
        check_float_tensor("search_in", search_in, min_ndim=1)
        index = torch.searchsorted(search_in.contiguous(),
                                   value.to(search_in.dtype).contiguous(),
                                   right=True) - 1
        return index.clamp(0, self.n_bins - 1)

    def evaluate_integral(self, gamma) -> torch.Tensor:
        """The unnormalised CDF C(gamma) in units of bins (bin_integral
        interpolated linearly inside each bin; ddm_dynamical's method)."""
        return self._integral(self._as_gamma(gamma))

    @property
    def normalization(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(C(gamma_min), C(gamma_max) - C(gamma_min)): the shift and scale
        that map the integral onto [0, 1] over the truncated range
        (ddm_dynamical's property)."""
        low = self.evaluate_integral(self.gamma_min)
        high = self.evaluate_integral(self.gamma_max)
        return low, high - low

    # ----------------------------------------------------------- update
    @torch.no_grad()
    def _bin_statistics(self, gamma: torch.Tensor, target: torch.Tensor
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(count, sum of target) per bin, in float64, on gamma's device,
        over the finite pairs only; and the number of pairs skipped (a NaN
        gamma or a NaN/inf target would otherwise make a bin, then the
        whole integral, NaN for good)."""
        gamma, target = gamma.reshape(-1), target.reshape(-1)
        finite = torch.isfinite(gamma) & torch.isfinite(target)
        index = self._bin_of_gamma(torch.where(finite, gamma,
                                               torch.zeros_like(gamma)))
        counts = torch.zeros(self.n_bins, dtype=torch.float64,
                             device=gamma.device)
        sums = torch.zeros_like(counts)
        counts.index_add_(0, index, finite.to(counts.dtype))
        sums.index_add_(0, index, torch.where(
            finite, target.to(torch.float64), 0.))
        return counts, sums, (~finite).sum()

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
               process_group: Optional[object] = None) -> torch.Tensor:
        """EMA update of the bins from per-sample statistics ``target``
        (>= 0) observed at ``gamma`` (same shape); docs/math.md,
        "The adaptive (binarized) schedule".

        Pairs with a non-finite gamma or target are skipped; returns their
        number (on this rank) as a 0-d int64 tensor on gamma's device, so a
        caller can report them without this method synchronising.

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
        counts, sums, skipped = self._bin_statistics(gamma, target)
        if _world_size(process_group) > 1:
            statistics = torch.stack((counts, sums))
            dist.all_reduce(statistics, op=dist.ReduceOp.SUM,
                            group=process_group)
            counts, sums = statistics[0], statistics[1]
        self._apply_bin_statistics(counts, sums)
        return skipped

    def extra_repr(self) -> str:
        return (f"n_bins={self.n_bins}, ema_rate={self.ema_rate:g}, "
                f"gamma_limits={self.gamma_limits}, " + super().extra_repr())
