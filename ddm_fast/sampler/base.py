"""The sampler base class: network calls, the time grid and the sampling loop.

A sampler integrates from the prior (t = 1, gamma_min) to the data (t = 0)
over the grid t_k = linspace(1, 0, timesteps + 1), gamma_k = scheduler(t_k),
as ddm_dynamical does. Final step: grid step k goes gamma_k -> gamma_{k+1},
except the last one, which goes onto sigma_tilde = 0 (gamma = +inf) instead
of onto the finite gamma_max: every sampler returns the denoised estimate
x_hat at gamma_{timesteps-1} there (docs/math.md, "The time grid";
ddm_dynamical's Heun does the same, k-diffusion's grids end with
sigma = 0). ``reconstruct(z, n_steps)``
runs the last ``n_steps`` steps of that grid from z at gamma_{timesteps -
n_steps}.

Each subclass implements ``step(z, gamma_t, gamma_s, mask, ...)`` on
per-sample (B,) log-SNRs: members of one batch may sit at different noise
levels, and gamma_s = +inf marks, per member, the step onto sigma_tilde = 0.
Steps compute their coefficients in Python on vectors of length B and apply
them with one :func:`ddm_fast.ops.affine` call; nothing reads a tensor value
on the host, so a loop can be captured as a CUDA graph. Python-level
decisions (the ``last`` flag, whether there is noise) come from the step
index and the sampler's settings.

Noise (docs/math.md, "Seeds and streams"): for a base seed S, the prior is
stream ``noise_seed(S, 0)`` and step i of a ``reconstruct`` call (i = 0
first) uses stream ``noise_seed(S, i + 1)``, as :mod:`ddm_fast.sampling`
does, both at offset ``member_offset * numel_per_sample``: member m's noise
is elements [m * n, (m + 1) * n) of each stream, whatever the batching.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from tqdm.auto import tqdm

from .. import ops
from .._validation import (check_float_tensor, check_gamma_range, check_mask,
                           check_per_sample, check_positive_int, check_seed,
                           check_tensor)
from ..ops import coefficient_dtype
from ..parameterization import get_param
from ..sampling import draw_seed, noise_seed
from ..utils import alpha_sigma, normalize_gamma
from .defaults import (default_postprocessing, default_preprocessing,
                       default_prior_sample)

__all__ = ["BaseSampler", "StepOutput"]

StepOutput = Tuple[torch.Tensor, Optional[torch.Tensor]]


def algebra_dtype(device) -> torch.dtype:
    """dtype of the per-sample coefficient algebra: float64 (cheap on
    vectors of length B), float32 where a device has no float64 (MPS)."""
    return torch.float32 if torch.device(device).type == "mps" \
        else torch.float64


def unit_rows(batch: int, n_inputs: int, like: torch.Tensor):
    """The n_inputs unit coefficient rows, each (batch, n_inputs): the
    basis in which a step writes its quantities as combinations of its
    input tensors."""
    eye = torch.eye(n_inputs, dtype=like.dtype, device=like.device)
    return [eye[k].expand(batch, n_inputs) for k in range(n_inputs)]


def col(vector: torch.Tensor) -> torch.Tensor:
    """A (B,) vector as a (B, 1) column, to scale coefficient rows."""
    return vector[:, None]


def _check_callable(name: str, value, optional: bool = True):
    if value is None and optional:
        return None
    if not callable(value):
        expected = "callable or None" if optional else "callable"
        raise TypeError(f"{name} must be {expected}, got "
                        f"{type(value).__name__}")
    return value


def _check_member_offset(member_offset) -> int:
    if isinstance(member_offset, bool) or not isinstance(member_offset, int) \
            or member_offset < 0:
        raise ValueError("member_offset must be a non-negative int, got "
                         f"{member_offset!r}")
    return member_offset


class BaseSampler(torch.nn.Module):
    """Common machinery of the samplers (ddm_dynamical's constructor).

    ``scheduler`` maps pseudo-times t in [0, 1] to gamma; ``denoising_network``
    is called as ``net(pre_func(in_data=z, alpha, sigma, gamma, **cond),
    normalized_gamma=(B, 1) tensor, mask=mask (only when given), **cond)``
    and ``post_func(prediction=..., in_data=z, alpha, sigma, gamma, **cond)``
    turns its output into f (alpha, sigma, gamma as (B, 1, ..., 1) tensors);
    ``param`` (default eps) maps f to x_hat. ``seed``: base seed of the
    noise (None: a fresh one per call from torch's CPU generator).
    """

    def __init__(self, scheduler: Callable, timesteps: int = 50,
                 denoising_network: Optional[Callable] = None,
                 pre_func: Optional[Callable] = None,
                 post_func: Optional[Callable] = None,
                 prior_sampler: Optional[Callable] = None,
                 param=None, gamma_min: float = -15., gamma_max: float = 15.,
                 pbar: bool = True, seed: Optional[int] = None, **kwargs):
        super().__init__()
        self.scheduler = _check_callable("scheduler", scheduler, optional=False)
        self.timesteps = check_positive_int("timesteps", timesteps)
        self.gamma_min, self.gamma_max = check_gamma_range(gamma_min, gamma_max)
        self.denoising_network = _check_callable("denoising_network",
                                                 denoising_network)
        self.pre_func = _check_callable("pre_func", pre_func) \
            or default_preprocessing
        self.post_func = _check_callable("post_func", post_func) \
            or default_postprocessing
        self.prior_sampler = _check_callable("prior_sampler", prior_sampler) \
            or default_prior_sample
        self.param = get_param(param)
        self.seed = None if seed is None else check_seed("seed", seed)
        if not isinstance(pbar, bool):
            raise TypeError(f"pbar must be a bool, got {type(pbar).__name__}")
        self.pbar = pbar
        self.kwargs = self._check_kwargs(kwargs)
        self._sample_kwargs = None

    def _check_kwargs(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected keyword "
                            f"argument(s) {sorted(kwargs)}")
        return kwargs

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
        a vector in the coefficient-algebra dtype (increasing gamma)."""
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

    # ------------------------------------------------------ network calls
    def per_sample_gamma(self, name: str, gamma, like: torch.Tensor
                         ) -> torch.Tensor:
        """``gamma`` (number, 0-d, (B,) or (B, 1, ...)) as a (B,) vector in
        the coefficient-algebra dtype."""
        dtype = algebra_dtype(like.device)
        if isinstance(gamma, (int, float)) and not isinstance(gamma, bool):
            return torch.full((like.shape[0],), float(gamma), dtype=dtype,
                              device=like.device)
        return check_per_sample(name, gamma, like.shape[0], like).to(dtype)

    def _network(self) -> Callable:
        if self.denoising_network is None:
            raise TypeError("denoising_network is not set: pass a callable "
                            "network to the sampler")
        return self.denoising_network

    def estimate_prediction(self, in_data: torch.Tensor, gamma,
                            mask: Optional[torch.Tensor] = None,
                            **conditioning) -> torch.Tensor:
        """Network output f at the noised state ``in_data`` and per-sample
        ``gamma``, through ``pre_func`` and ``post_func``."""
        network = self._network()
        gamma = self.per_sample_gamma("gamma", gamma, in_data)
        batch = in_data.shape[0]
        shape = (batch,) + (1,) * (in_data.ndim - 1)
        alpha, sigma = alpha_sigma(gamma)
        stats = {name: value.to(in_data.dtype).reshape(shape) for name, value
                 in (("alpha", alpha), ("sigma", sigma), ("gamma", gamma))}
        in_tensor = self.pre_func(in_data=in_data, **stats, **conditioning)
        norm_gamma = normalize_gamma(gamma, self.gamma_min, self.gamma_max)
        net_kwargs = dict(conditioning)
        if mask is not None:
            net_kwargs["mask"] = mask
        prediction = network(in_tensor,
                             normalized_gamma=norm_gamma.to(in_data.dtype)
                             .reshape(batch, 1), **net_kwargs)
        prediction = self.post_func(prediction=prediction, in_data=in_data,
                                    **stats, **conditioning)
        if not isinstance(prediction, torch.Tensor) or \
                prediction.shape != in_data.shape:
            raise ValueError(
                "the network (after post_func) must return a tensor of the "
                f"state's shape {tuple(in_data.shape)}, got "
                f"{getattr(prediction, 'shape', type(prediction).__name__)}")
        return prediction

    def estimate_denoised(self, in_data: torch.Tensor, gamma,
                          mask: Optional[torch.Tensor] = None,
                          **conditioning) -> torch.Tensor:
        """x_hat = p z + q f at per-sample ``gamma`` (one fused op)."""
        gamma = self.per_sample_gamma("gamma", gamma, in_data)
        prediction = self.estimate_prediction(in_data, gamma, mask,
                                              **conditioning)
        p, q = self.param.denoise_coefficients(gamma)
        return ops.affine([in_data, prediction], torch.stack((p, q), 1).to(
            coefficient_dtype(in_data)), mask)

    # --------------------------------------------------------------- steps
    def check_step_args(self, z, gamma_t, gamma_s, mask):
        """Validate a step's arguments; returns (gamma_t, gamma_s) as (B,)."""
        check_float_tensor("z", z, min_ndim=1)
        gamma_t = self.per_sample_gamma("gamma_t", gamma_t, z)
        gamma_s = self.per_sample_gamma("gamma_s", gamma_s, z)
        check_mask(mask, z, like_name="z")
        return gamma_t, gamma_s

    def step(self, z: torch.Tensor, gamma_t, gamma_s,
             mask: Optional[torch.Tensor] = None, *, last: bool = False,
             seed: Optional[int] = None, offset: int = 0,
             return_denoised: bool = False, **conditioning) -> StepOutput:
        """One step gamma_t -> gamma_s (per-sample (B,) log-SNRs; +inf: onto
        sigma_tilde = 0). Returns (z_s, x_hat or None)."""
        raise NotImplementedError

    def forward(self, *args, **kwargs) -> StepOutput:
        """Calling the sampler performs one :meth:`step`."""
        return self.step(*args, **kwargs)

    def _loop_step(self, z, gamma_t, gamma_s, *, mask, last, seed, offset,
                   return_denoised, n_steps, memory, conditioning
                   ) -> StepOutput:
        """One step of :meth:`reconstruct`; multistep samplers keep their
        history in ``memory``."""
        return self.step(z, gamma_t, gamma_s, mask, last=last, seed=seed,
                         offset=offset, return_denoised=return_denoised,
                         **conditioning)

    # ---------------------------------------------------------- sampling
    def sample_prior(self, sample_shape, seed: int, member_offset: int = 0
                     ) -> torch.Tensor:
        """The prior sample: counter-based stream ``noise_seed(seed, 0)`` at
        offset ``member_offset * numel_per_sample`` for the default
        ``prior_sampler``, else ``prior_sampler(shape, **sample_kwargs)``."""
        shape = tuple(torch.Size(sample_shape))
        per_sample = math.prod(shape[1:])
        if self.prior_sampler is default_prior_sample:
            prior = default_prior_sample(
                shape, seed=noise_seed(seed, 0),
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
               **conditioning) -> torch.Tensor:
        """Draw samples of shape ``sample_shape`` = (B, ...) from the prior
        through all ``timesteps`` steps. ``seed`` overrides the sampler's;
        ``member_offset`` is the ensemble index of the first member."""
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
                                member_offset=member_offset, **conditioning)

    def _check_reconstruct_args(self, in_tensor, n_steps, mask, callback,
                                member_offset) -> int:
        """Validate the arguments of ``reconstruct``; returns n_steps."""
        check_float_tensor("in_tensor", in_tensor, min_ndim=1)
        n_steps = self.timesteps if n_steps is None else \
            check_positive_int("n_steps", n_steps)
        if n_steps > self.timesteps:
            raise ValueError(f"n_steps must be <= timesteps "
                             f"({self.timesteps}), got {n_steps}")
        check_mask(mask, in_tensor, like_name="in_tensor")
        _check_callable("callback", callback)
        _check_member_offset(member_offset)
        return n_steps

    @torch.no_grad()
    def reconstruct(self, in_tensor: torch.Tensor,
                    n_steps: Optional[int] = None,
                    mask: Optional[torch.Tensor] = None,
                    callback: Optional[Callable[[Dict[str, Any]], None]] = None,
                    seed: Optional[int] = None, member_offset: int = 0,
                    **conditioning) -> torch.Tensor:
        """Denoise ``in_tensor`` (z at gamma_{timesteps - n_steps}) through
        the last ``n_steps`` steps of the grid (None: all of them).

        ``callback`` receives after every step a dict with ``z`` (the new
        state), ``i`` (step of this call), ``gamma``, ``gamma_next`` and
        ``denoised`` (x_hat of the step).
        """
        n_steps = self._check_reconstruct_args(in_tensor, n_steps, mask,
                                               callback, member_offset)
        base_seed = draw_seed(seed if seed is not None else self.seed) \
            if self.needs_noise else None
        grid = self.gamma_grid(in_tensor.device, in_tensor.dtype)
        batch = in_tensor.shape[0]
        offset = member_offset * (in_tensor.numel() // max(batch, 1))
        state = in_tensor
        if mask is not None:  # the network never sees masked values
            state = ops.affine([in_tensor], torch.ones(
                (batch, 1), dtype=coefficient_dtype(in_tensor),
                device=in_tensor.device), mask)
        onto_zero = torch.full((batch,), math.inf, dtype=grid.dtype,
                               device=grid.device)
        first = self.timesteps - n_steps
        memory: Dict[str, Any] = {}
        steps = tqdm(range(first, self.timesteps), disable=not self.pbar,
                     leave=False)
        for k in steps:
            last = k == self.timesteps - 1
            gamma_t = grid[k].expand(batch)
            gamma_s = onto_zero if last else grid[k + 1].expand(batch)
            state, denoised = self._loop_step(
                state, gamma_t, gamma_s, mask=mask, last=last,
                seed=None if base_seed is None
                else noise_seed(base_seed, k - first + 1),
                offset=offset, return_denoised=callback is not None,
                n_steps=n_steps, memory=memory, conditioning=conditioning)
            if callback is not None:
                callback({"z": state, "i": k - first, "gamma": gamma_t,
                          "gamma_next": gamma_s, "denoised": denoised})
        return state
