"""The sampler base class: the time grid, the prior and the sampling loop.

A sampler integrates from the prior (t = 1) to the data (t = 0) over the grid
t_k = linspace(1, 0, timesteps + 1), gamma_k = scheduler(t_k), as
ddm_dynamical does. Final step: grid step k goes gamma_k -> gamma_{k+1},
except the last one, which goes onto sigma_tilde = 0 (gamma = +inf) instead
of onto the finite gamma_max: every sampler returns the denoised estimate
x_hat at gamma_{timesteps-1} there (docs/math.md, "The time grid";
ddm_dynamical's Heun does the same, k-diffusion's grids end with sigma = 0).
``reconstruct(z, n_steps)`` runs the last ``n_steps`` steps of that grid
from z at gamma_{timesteps - n_steps}. The grid and every coefficient are
computed in float64 (float32 on MPS), whatever the state's dtype.

The network's conditioning (gamma normalisation, parameterization, pre/post
functions) belongs to a :class:`ddm_fast.denoiser.Denoiser`; the toolbox's
constructor arguments build one (or pass a Denoiser as
``denoising_network``). The steps and loops are those of
:mod:`ddm_fast.sampler.methods`; a subclass only says which loop it runs.

Noise (docs/math.md, "Seeds and streams"): for a base seed S, the prior is
stream ``derive_seed(S, 0)`` and step i of a ``reconstruct`` call (i = 0
first) uses stream ``derive_seed(S, i + 1)``, both at offset
``member_offset * numel_per_sample``: member m's noise is elements
[m * n, (m + 1) * n) of each stream, whatever the batching.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from .. import ops
from .._math import alpha_sigma
from .._validation import (check_float_tensor, check_mask, check_positive_int,
                           check_seed, check_tensor)
from ..denoiser import (Denoiser, algebra_dtype, as_denoiser, check_callable,
                        check_gamma_bounds, per_sample_gamma,
                        resolve_gamma_bound, resolve_param)
from ..ops import coefficient_dtype
from ..seeds import derive_seed, draw_seed
from .. import graphs
from . import methods
from .defaults import (default_postprocessing, default_preprocessing,
                       default_prior_sample)

__all__ = ["BaseSampler", "StepOutput"]

StepOutput = Tuple[torch.Tensor, Optional[torch.Tensor]]


def _check_member_offset(member_offset) -> int:
    if isinstance(member_offset, bool) or not isinstance(member_offset, int) \
            or not 0 <= member_offset < 2 ** 62:
        raise ValueError("member_offset must be an int in [0, 2**62), got "
                         f"{member_offset!r}")
    return member_offset


def check_number(name: str, value, minimum: Optional[float] = None,
                 maximum: Optional[float] = None) -> float:
    """A real number (not NaN) within [minimum, maximum], as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if value != value or (minimum is not None and value < minimum) or \
            (maximum is not None and value > maximum):
        bounds = f"in [{minimum}, {maximum}]" if maximum is not None else \
            f">= {minimum}" if minimum is not None else "a number"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


_WARNED_ARGUMENTS = set()


def _caller_level() -> int:
    """warnings' stacklevel of the first frame outside ddm_fast.sampler (the
    user's constructor call, whatever the subclass depth)."""
    import os
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(
            os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level


def warn_ignored(owner: str, kwargs: Dict[str, Any]) -> None:
    """ddm_dynamical's modules take and ignore unknown keyword arguments
    (hydra configs carry extra keys, e.g. the sea-ice configs' grad_scale):
    accept them too, warning once per (class, argument)."""
    for name in sorted(kwargs):
        if (owner, name) not in _WARNED_ARGUMENTS:
            _WARNED_ARGUMENTS.add((owner, name))
            warnings.warn(f"{owner} ignores the keyword argument {name!r} "
                          f"(accepted for ddm_dynamical compatibility)",
                          UserWarning, stacklevel=_caller_level())


class BaseSampler(torch.nn.Module):
    """Common machinery of the samplers (ddm_dynamical's constructor).

    ``scheduler`` maps pseudo-times t in [0, 1] to gamma. The network's
    conditioning is a :class:`~ddm_fast.denoiser.Denoiser` built from
    ``denoising_network``, ``param`` (default eps), ``gamma_min``,
    ``gamma_max`` (default: the range the network is conditioned with, else
    ddm_fast's one default (-10, 10)), ``pre_func`` and ``post_func``; or
    pass a Denoiser as ``denoising_network``. ``seed``: base seed of the
    noise (None: a fresh one per call from torch's CPU generator). Unknown
    keyword arguments are accepted and ignored with a warning, as the
    toolbox does.

    ``zero_land`` (default True): masked positions of the state are 0
    before every network call. ddm_dynamical instead let the state evolve
    under the mask (its network saw noise there, in training and in
    sampling); ``zero_land=False`` does the same, for a toolbox-trained
    network that mixes neighbouring points (a convolution near the coast).
    Either way the returned sample is 0 under the mask, and the mask is
    handed to pre_func, the network and post_func.
    """

    def __init__(self, scheduler: Callable, timesteps: int = 50,
                 denoising_network: Optional[Callable] = None,
                 pre_func: Optional[Callable] = None,
                 post_func: Optional[Callable] = None,
                 prior_sampler: Optional[Callable] = None,
                 param=None, gamma_min: Optional[float] = None,
                 gamma_max: Optional[float] = None,
                 pbar: bool = True, seed: Optional[int] = None, *,
                 zero_land: bool = True, **kwargs):
        super().__init__()
        self.scheduler = check_callable("scheduler", scheduler, optional=False)
        self.timesteps = check_positive_int("timesteps", timesteps)
        check_callable("denoising_network", denoising_network)
        if isinstance(denoising_network, Denoiser):
            as_denoiser(denoising_network, param, gamma_min, gamma_max,
                        pre_func, post_func, owner=type(self).__name__)
            param, pre_func, post_func = (denoising_network.param,
                                          denoising_network.pre_func,
                                          denoising_network.post_func)
            gamma_min = denoising_network.gamma_min
            gamma_max = denoising_network.gamma_max
        self.denoising_network = denoising_network
        self.gamma_min, self.gamma_max = check_gamma_bounds(gamma_min,
                                                            gamma_max)
        self.pre_func = check_callable("pre_func", pre_func) \
            or default_preprocessing
        self.post_func = check_callable("post_func", post_func) \
            or default_postprocessing
        self.prior_sampler = check_callable("prior_sampler", prior_sampler) \
            or default_prior_sample
        self.param = resolve_param(param)
        self.seed = None if seed is None else check_seed("seed", seed)
        if not isinstance(pbar, bool):
            raise TypeError(f"pbar must be a bool, got {type(pbar).__name__}")
        self.pbar = pbar
        if not isinstance(zero_land, bool):
            raise TypeError("zero_land must be a bool, got "
                            f"{type(zero_land).__name__}")
        self.zero_land = zero_land
        self.kwargs = self._check_kwargs(kwargs)
        self._sample_kwargs = None
        self._denoiser_cache = None

    def _check_kwargs(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        warn_ignored(type(self).__name__, kwargs)
        return dict(kwargs)

    # ---------------------------------------------------- conditioning
    def __setattr__(self, name, value):
        # gamma_min/gamma_max are properties even when a scheduler's
        # Parameter is assigned (the toolbox's Lightning module does
        # ``sampler.gamma_min = scheduler.gamma_min``): nn.Module would
        # otherwise register it as a parameter of the sampler.
        if name in ("gamma_min", "gamma_max"):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def gamma_min(self):
        """Lower end of the gamma normalisation range (the Denoiser's)."""
        if self._gamma_min is None and self.denoising_network is not None:
            return self.denoiser.gamma_range[0]
        return self._gamma_min

    @gamma_min.setter
    def gamma_min(self, value) -> None:
        object.__setattr__(self, "_gamma_min",
                           resolve_gamma_bound("gamma_min", value))

    @property
    def gamma_max(self):
        """Upper end of the gamma normalisation range (the Denoiser's)."""
        if self._gamma_max is None and self.denoising_network is not None:
            return self.denoiser.gamma_range[1]
        return self._gamma_max

    @gamma_max.setter
    def gamma_max(self, value) -> None:
        object.__setattr__(self, "_gamma_max",
                           resolve_gamma_bound("gamma_max", value))

    @property
    def denoiser(self) -> Denoiser:
        """The :class:`Denoiser` of the current settings (rebuilt when the
        network, param, range or pre/post functions are reassigned)."""
        network = self.denoising_network
        if network is None:
            raise TypeError("denoising_network is not set: pass a callable "
                            "network (or a Denoiser) to the sampler")
        if isinstance(network, Denoiser):
            return network
        # tensors by identity: reading a device tensor's value would sync
        key = (id(network), id(self.param), id(self.pre_func),
               id(self.post_func)) + tuple(
                   ("tensor", id(b)) if isinstance(b, torch.Tensor) else b
                   for b in (self._gamma_min, self._gamma_max))
        cache = self.__dict__.get("_denoiser_cache")
        if cache is None or cache[0] != key:
            denoiser = Denoiser(network, self.param, self._gamma_min,
                                self._gamma_max, self.pre_func,
                                self.post_func)
            # not a submodule: the sampler's state_dict keeps the toolbox's
            # layout (denoising_network.*, param.*, scheduler.*)
            object.__setattr__(self, "_denoiser_cache", (key, denoiser))
            cache = self.__dict__["_denoiser_cache"]
        return cache[1]

    @property
    def needs_noise(self) -> bool:
        """Whether the steps draw noise (decided by the settings, in Python)."""
        return False

    # ------------------------------------------------------------ settings
    @property
    def sample_kwargs(self) -> Dict[str, Any]:
        """device/dtype/layout of the prior sample: those of the network's
        first parameter, else the defaults (CPU, float32)."""
        if self._sample_kwargs is None:
            try:
                template = next(self.denoising_network.parameters())
                self._sample_kwargs = {"device": template.device,
                                       "layout": template.layout,
                                       "dtype": template.dtype}
            except (StopIteration, AttributeError, TypeError):
                self._sample_kwargs = {}
        return self._sample_kwargs

    @sample_kwargs.setter
    def sample_kwargs(self, kwargs: Optional[Dict[str, Any]] = None) -> None:
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError("sample_kwargs must be a dict or None, got "
                            f"{type(kwargs).__name__}")
        self._sample_kwargs = kwargs

    def gamma_grid(self, device=None, dtype: torch.dtype = torch.float32
                   ) -> torch.Tensor:
        """gamma_k = scheduler(t_k), t_k = linspace(1, 0, timesteps + 1), as
        a vector in the algebra dtype (float64; float32 on MPS). The times
        are made in float32 at least (``dtype`` bfloat16/float16 would
        quantise them) and the scheduler runs in that dtype."""
        if dtype not in (torch.float32, torch.float64):
            dtype = torch.float32
        times = torch.linspace(1, 0, self.timesteps + 1, device=device,
                               dtype=dtype)
        with torch.no_grad():
            gammas = self.scheduler(times)
        check_tensor("scheduler(t)", gammas)
        if gammas.numel() != self.timesteps + 1:
            raise ValueError(
                f"scheduler must map the {self.timesteps + 1} times to as many "
                f"gammas, got shape {tuple(gammas.shape)}")
        return gammas.reshape(-1).to(algebra_dtype(times.device))

    def convert_step(self, step: torch.Tensor) -> Dict[str, torch.Tensor]:
        """ddm_dynamical's statistics of pseudo-time ``step``: a dict with
        step, gamma, alpha_sq, alpha and sigma (alpha and sigma stable for
        large |gamma|)."""
        check_tensor("step", step)
        gamma = self.scheduler(step)
        alpha, sigma = alpha_sigma(gamma)
        return {"step": step, "gamma": gamma,
                "alpha_sq": torch.sigmoid(gamma), "alpha": alpha,
                "sigma": sigma}

    # ------------------------------------------------------ network calls
    def per_sample_gamma(self, name: str, gamma, like: torch.Tensor
                         ) -> torch.Tensor:
        """``gamma`` (number, 0-d, (B,) or (B, 1, ...)) as a (B,) vector in
        the coefficient-algebra dtype."""
        return per_sample_gamma(name, gamma, like)

    def _gamma_of(self, in_data, alpha, sigma, gamma) -> torch.Tensor:
        if gamma is None:
            if alpha is None or sigma is None:
                raise TypeError("give gamma (or alpha and sigma) to evaluate "
                                "the network")
            alpha = per_sample_gamma("alpha", alpha, in_data)
            sigma = per_sample_gamma("sigma", sigma, in_data)
            return 2 * (torch.log(alpha) - torch.log(sigma))
        return per_sample_gamma("gamma", gamma, in_data)

    def estimate_prediction(self, in_data: torch.Tensor, alpha=None,
                            sigma=None, gamma=None,
                            **conditioning) -> torch.Tensor:
        """Network output f at the noised state ``in_data`` (ddm_dynamical's
        signature: ``alpha``, ``sigma``, ``gamma`` per sample; gamma wins,
        else it is log(alpha^2 / sigma^2)); ``mask`` may be among the
        conditioning and is handed on as the toolbox does."""
        check_float_tensor("in_data", in_data, min_ndim=1)
        gamma = self._gamma_of(in_data, alpha, sigma, gamma)
        mask = conditioning.pop("mask", None)
        return self.denoiser.prediction(in_data, gamma, mask, **conditioning)

    def estimate_denoised(self, in_data: torch.Tensor, alpha=None,
                          sigma=None, gamma=None,
                          **conditioning) -> torch.Tensor:
        """x_hat = p z + q f (ddm_dynamical's signature, see
        :meth:`estimate_prediction`; one fused op, masked)."""
        check_float_tensor("in_data", in_data, min_ndim=1)
        gamma = self._gamma_of(in_data, alpha, sigma, gamma)
        mask = conditioning.pop("mask", None)
        return self.denoiser(in_data, gamma, mask, **conditioning)

    # --------------------------------------------------------------- steps
    def check_step_args(self, z, gamma_t, gamma_s, mask):
        """Validate a step's arguments; returns (gamma_t, gamma_s) as (B,)."""
        check_float_tensor("z", z, min_ndim=1)
        gamma_t = per_sample_gamma("gamma_t", gamma_t, z)
        gamma_s = per_sample_gamma("gamma_s", gamma_s, z)
        check_mask(mask, z, like_name="z")
        return gamma_t, gamma_s

    def frame(self, mask=None, conditioning=None) -> methods.DenoiserFrame:
        """The state z through this sampler's Denoiser (methods' frame)."""
        return methods.DenoiserFrame(self.denoiser, mask, conditioning)

    def step(self, z: torch.Tensor, gamma_t, gamma_s,
             mask: Optional[torch.Tensor] = None, *, last: bool = False,
             seed: Optional[int] = None, offset: int = 0,
             return_denoised: bool = False, **conditioning) -> StepOutput:
        """One step gamma_t -> gamma_s (per-sample (B,) log-SNRs; +inf: onto
        sigma_tilde = 0). Returns (z_s, x_hat or None)."""
        raise NotImplementedError

    def forward(self, *args, **kwargs):
        """Calling the sampler performs one step: :meth:`step`, or the
        toolbox's ``sampler(in_data, curr_stats, next_stats, **cond)`` with
        the dicts of :meth:`convert_step`, which returns the new state only
        (x_hat when ``next_stats["step"]`` is 0, as the toolbox does)."""
        if len(args) >= 3 and isinstance(args[1], dict):
            return self._toolbox_step(*args, **kwargs)
        if isinstance(kwargs.get("curr_stats"), dict):
            return self._toolbox_step(*args, **kwargs)
        return self.step(*args, **kwargs)

    def _toolbox_step(self, in_data, curr_stats, next_stats, **conditioning):
        for name, stats in (("curr_stats", curr_stats),
                            ("next_stats", next_stats)):
            if not isinstance(stats, dict) or "gamma" not in stats:
                raise TypeError(f"{name} must be a dict with 'gamma' (from "
                                f"convert_step), got {stats!r}")
        check_float_tensor("in_data", in_data, min_ndim=1)
        mask = conditioning.pop("mask", None)
        gamma_t = per_sample_gamma("curr_stats['gamma']",
                                   curr_stats["gamma"], in_data)
        gamma_s = per_sample_gamma("next_stats['gamma']",
                                   next_stats["gamma"], in_data)
        onto_zero = "step" in next_stats and isinstance(
            next_stats["step"], (torch.Tensor, int, float)) and \
            bool(torch.as_tensor(next_stats["step"]).eq(0).all())
        if onto_zero:
            gamma_s = torch.full_like(gamma_s, math.inf)
        out, _ = self.step(in_data, gamma_t, gamma_s, mask, last=onto_zero,
                           **self._toolbox_step_kwargs(), **conditioning)
        return out

    def _toolbox_step_kwargs(self) -> Dict[str, Any]:
        return {"seed": draw_seed(self.seed)} if self.needs_noise else {}

    # ---------------------------------------------------- the loop (hook)
    def run_loop(self, frame, state, levels, *, noise, mask, report):
        """Run this sampler's method over ``levels`` (subclasses)."""
        raise NotImplementedError

    # ---------------------------------------------------------- sampling
    def sample_prior(self, sample_shape, seed: int, member_offset: int = 0
                     ) -> torch.Tensor:
        """The prior sample: counter-based stream ``derive_seed(seed, 0)`` at
        offset ``member_offset * numel_per_sample`` for the default
        ``prior_sampler``, else ``prior_sampler(shape, **sample_kwargs)``."""
        shape = tuple(torch.Size(sample_shape))
        per_sample = math.prod(shape[1:])
        if self.prior_sampler is default_prior_sample:
            prior = default_prior_sample(
                shape, seed=derive_seed(seed, 0),
                offset=member_offset * per_sample, **self.sample_kwargs)
        else:
            prior = self.prior_sampler(shape, **self.sample_kwargs)
        check_float_tensor("prior_sampler(shape)", prior)
        if tuple(prior.shape) != shape:
            raise ValueError(f"prior_sampler must return shape {shape}, got "
                             f"{tuple(prior.shape)}")
        return prior

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size([]),
               mask: Optional[torch.Tensor] = None,
               callback: Optional[Callable[[Dict[str, Any]], None]] = None,
               seed: Optional[int] = None, member_offset: int = 0,
               graph: bool = False, **conditioning) -> torch.Tensor:
        """Draw samples of shape ``sample_shape`` = (B, ...) from the prior
        through all ``timesteps`` steps. ``seed`` overrides the sampler's;
        ``member_offset`` is the ensemble index of the first member;
        ``mask`` and the conditioning reach pre_func, the network and
        post_func. ``graph``: run the reverse loop as a CUDA graph (see
        :meth:`reconstruct`)."""
        if not isinstance(sample_shape, (torch.Size, tuple, list)) or \
                len(sample_shape) < 1 or any(
                    isinstance(s, bool) or not isinstance(s, int) or s < 0
                    for s in sample_shape):
            raise ValueError("sample_shape must be a sequence of non-negative "
                             f"ints (batch first), got {sample_shape!r}")
        _check_member_offset(member_offset)
        base_seed = draw_seed(seed if seed is not None else self.seed)
        prior = self.sample_prior(sample_shape, base_seed, member_offset)
        return self.reconstruct(prior, self.timesteps, mask=mask,
                                callback=callback, seed=base_seed,
                                member_offset=member_offset, graph=graph,
                                **conditioning)

    def _check_reconstruct_args(self, in_tensor, n_steps, mask, callback,
                                member_offset) -> int:
        """Validate the arguments of ``reconstruct``; returns n_steps
        (clipped to ``timesteps`` as the toolbox does)."""
        check_float_tensor("in_tensor", in_tensor, min_ndim=1)
        n_steps = self.timesteps if n_steps is None else \
            min(check_positive_int("n_steps", n_steps), self.timesteps)
        check_mask(mask, in_tensor, like_name="in_tensor")
        check_callable("callback", callback)
        _check_member_offset(member_offset)
        return n_steps

    @torch.no_grad()
    def reconstruct(self, in_tensor: torch.Tensor,
                    n_steps: Optional[int] = None,
                    mask: Optional[torch.Tensor] = None,
                    callback: Optional[Callable[[Dict[str, Any]], None]] = None,
                    seed: Optional[int] = None, member_offset: int = 0,
                    graph: bool = False, **conditioning) -> torch.Tensor:
        """Denoise ``in_tensor`` (z at gamma_{timesteps - n_steps}) through
        the last ``n_steps`` steps of the grid (None: all; more than
        ``timesteps``: all, as in the toolbox).

        ``callback`` receives after every step a dict with ``z`` (the new
        state), ``i`` (step of this call), ``gamma``, ``gamma_next`` and
        ``denoised`` (x_hat of the step).

        ``graph=True`` (CUDA only): the whole loop, network included, is
        captured once per input signature as a CUDA graph and replayed, one
        launch instead of several per step (:mod:`ddm_fast.graphs`). The
        result equals the eager loop's for the same seed, bitwise: each
        replay writes its seeds into the graph's seed table. The network
        must be capturable (no host synchronisation); ``callback`` cannot
        be combined with it.
        """
        n_steps = self._check_reconstruct_args(in_tensor, n_steps, mask,
                                               callback, member_offset)
        if not isinstance(graph, bool):
            raise TypeError(f"graph must be a bool, got {type(graph).__name__}")
        batch = in_tensor.shape[0]
        offset = member_offset * (in_tensor.numel() // max(batch, 1))
        base_seed = draw_seed(seed if seed is not None else self.seed) \
            if self.needs_noise else None
        if graph:
            return self._reconstruct_graphed(in_tensor, n_steps, mask, callback,
                                             base_seed, offset, conditioning)
        noise = methods.NoiseStreams(base_seed, offset) \
            if self.needs_noise else None
        return self._reconstruct_loop(in_tensor, n_steps, mask, callback,
                                      noise, conditioning)

    def _reconstruct_graphed(self, in_tensor, n_steps, mask, callback,
                             base_seed, offset, conditioning):
        """``reconstruct`` as a replayed CUDA graph: the tensors (state,
        mask, tensor conditioning) are the graph's static inputs; everything
        else is part of the capture's key."""
        graphs.check_no_callback(callback)
        tensors = {"in_tensor": in_tensor}
        if mask is not None:
            tensors["mask"] = mask
        fixed, fixed_key = graphs.split_keywords("conditioning:", conditioning,
                                                 tensors)
        key = (n_steps, offset, self.needs_noise, fixed_key)

        def loop(static, seed_table):
            noise = methods.NoiseStreams(None, offset, seed_table) \
                if self.needs_noise else None
            static_conditioning = graphs.join_keywords("conditioning:",
                                                       static, fixed)
            return self._reconstruct_loop(static["in_tensor"], n_steps,
                                          static.get("mask"), None, noise,
                                          static_conditioning)

        seeds = methods.NoiseStreams.table_seeds(base_seed, n_steps) \
            if self.needs_noise else []
        return graphs.run_graphed(self, key, loop, tensors, seeds)

    def _reconstruct_loop(self, in_tensor, n_steps, mask, callback, noise,
                          conditioning):
        """The reverse loop of ``reconstruct`` (arguments checked)."""
        batch = in_tensor.shape[0]
        gammas = self.gamma_grid(in_tensor.device, in_tensor.dtype)
        levels = methods.vp_levels(gammas[self.timesteps - n_steps:], batch)
        state = in_tensor
        if mask is not None:  # the network never sees masked values
            state = self._masked(in_tensor, mask)
        # zero_land=False: the steps run unmasked (the toolbox's state),
        # the network still gets the mask, the result is masked once
        step_mask = mask if self.zero_land else None
        report = None
        if callback is not None:
            def report(i, _state, t, _t_hat, s, denoised, new):
                callback({"z": new, "i": i, "gamma": 2 * t.lam,
                          "gamma_next": 2 * s.lam, "denoised": denoised})
        if not self.zero_land:
            state = in_tensor
        out = self.run_loop(self.frame(mask, conditioning), state, levels,
                            noise=noise, mask=step_mask, report=report)
        if mask is not None and not self.zero_land:
            out = self._masked(out, mask)
        return out

    @staticmethod
    def _masked(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tensor`` with masked positions 0 (selected, so NaN there goes)."""
        ones = torch.ones((tensor.shape[0], 1), device=tensor.device,
                          dtype=coefficient_dtype(tensor))
        return ops.affine([tensor], ones, mask)
