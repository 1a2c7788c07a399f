"""Ensembles: many members, sampled chunk by chunk, kept the way
geoscientists keep them.

    samples = sample_ensemble(sampler, 50, sample_shape=(1, 40), chunk=8,
                              seed=3, path="ensemble.nc")

Member k's noise depends only on (seed, k): chunk c of the run is sampled
with ``member_offset`` = its first member (docs/math.md, "Seeds and
streams"), so any chunk size gives the same members bitwise (on one device
and backend). Memory is bounded by the chunk. With ``path`` the members are
appended chunk by chunk to an xarray Dataset in netCDF (``.nc``) or zarr
(``.zarr``): variable ``samples`` (member, channel, grid...), the ``mask``
as a variable, and scheduler, sampler, steps, seed and library version as
attributes; attribute ``members_written`` is updated after each chunk, so a
crash loses at most one chunk and a new call with the same arguments
resumes where the last one stopped. xarray with netCDF4 or zarr are
optional: ``pip install ddm_fast[ensemble]``.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ._validation import check_mask, check_positive_int, check_seed
from .denoiser import Denoiser

__all__ = ["sample_ensemble"]


def _require(module: str, extra: str = "ensemble"):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"writing an ensemble needs the optional package {module!r}: "
            f"pip install ddm_fast[{extra}] (xarray, netCDF4, zarr)") from None


def _sampler_of(denoiser_or_sampler, scheduler, timesteps, method):
    from .sampler import BaseSampler, HeunSampler
    if isinstance(denoiser_or_sampler, BaseSampler):
        return denoiser_or_sampler
    if not isinstance(denoiser_or_sampler, Denoiser):
        raise TypeError("denoiser_or_sampler must be a ddm_fast sampler or a "
                        f"Denoiser, got {type(denoiser_or_sampler).__name__}")
    if scheduler is None:
        raise ValueError("a Denoiser needs scheduler= (the sampling grid)")
    method = method or HeunSampler
    return method(scheduler, timesteps=timesteps,
                  denoising_network=denoiser_or_sampler, pbar=False)


def _attributes(sampler, seed: int, n_members: int) -> Dict[str, Any]:
    from . import __version__
    return {"scheduler": type(sampler.scheduler).__name__,
            "sampler": type(sampler).__name__,
            "steps": int(sampler.timesteps), "seed": int(seed),
            "n_members": int(n_members), "ddm_fast_version": __version__}


def _members_written(path: str, attrs: Dict[str, Any]) -> int:
    """Members already in ``path`` (0 if absent); refuses another run's."""
    if not os.path.exists(path):
        return 0
    with _open(path) as existing:
        for key, value in attrs.items():
            if key != "ddm_fast_version" and existing.attrs.get(key) != value:
                raise ValueError(
                    f"{path} holds another ensemble ({key}="
                    f"{existing.attrs.get(key)!r}, this run {value!r}): "
                    "remove it or choose another path")
        return int(existing.attrs.get("members_written", 0))


def _open(path: str):
    xr = _require("xarray")
    return xr.open_dataset(path, engine="zarr" if path.endswith(".zarr")
                           else "netcdf4")


def _write_chunk(path: str, samples: torch.Tensor, start: int,
                 mask: Optional[torch.Tensor], attrs: Dict[str, Any],
                 sample_dims: Sequence[str]) -> None:
    xr = _require("xarray")
    values = samples.detach().float().cpu().numpy()
    dims = ["member"] + list(sample_dims)
    if start == 0:
        data = {"samples": (dims, values)}
        if mask is not None:
            valid = mask != 0
            # a mask may carry the samplers' leading batch dimension of 1
            while valid.ndim > samples.ndim - 1 and valid.shape[0] == 1:
                valid = valid[0]
            full = torch.broadcast_to(valid, samples.shape[1:])
            data["mask"] = (dims[1:], full.cpu().numpy().astype("int8"))
        ds = xr.Dataset(data, coords={"member": range(values.shape[0])},
                        attrs=dict(attrs, members_written=values.shape[0]))
        if path.endswith(".zarr"):
            _require("zarr")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore",
                                        message="Consolidated metadata")
                ds.to_zarr(path, mode="w")
        else:
            _require("netCDF4")
            ds.to_netcdf(path, unlimited_dims=["member"], engine="netcdf4")
        return
    stop = start + values.shape[0]
    if path.endswith(".zarr"):
        zarr = _require("zarr")
        group = zarr.open_group(path, mode="a")
        for name, array in (("samples", values),
                            ("member", list(range(start, stop)))):
            target = group[name]
            target.resize((stop,) + tuple(target.shape[1:]))
            target[start:stop] = array
        group.attrs["members_written"] = stop
        with warnings.catch_warnings():  # zarr 3 calls it not yet standard
            warnings.filterwarnings("ignore", message="Consolidated metadata")
            zarr.consolidate_metadata(path)  # xarray reads this copy
    else:
        netCDF4 = _require("netCDF4")
        with netCDF4.Dataset(path, "a") as nc:
            nc["samples"][start:stop] = values
            nc["member"][start:stop] = list(range(start, stop))
            nc.setncattr("members_written", stop)


def sample_ensemble(denoiser_or_sampler, n_members: int,
                    sample_shape: Sequence[int], *, chunk: int = 16,
                    seed: int = 0, mask: Optional[torch.Tensor] = None,
                    conditioning: Optional[Dict[str, Any]] = None,
                    path: Optional[str] = None, scheduler=None,
                    timesteps: int = 20, method=None,
                    dims: Optional[Sequence[str]] = None,
                    progress: bool = True):
    """Sample ``n_members`` members of shape ``sample_shape`` (channel,
    grid...), ``chunk`` at a time.

    ``denoiser_or_sampler``: a ddm_fast sampler, or a
    :class:`~ddm_fast.denoiser.Denoiser` sampled by ``method`` (default
    :class:`~ddm_fast.sampler.HeunSampler`) on ``scheduler`` with
    ``timesteps`` steps. ``conditioning`` tensors whose first dimension is
    ``n_members`` are sliced per chunk, others are handed on whole.
    ``dims``: names of the sample dimensions in the Dataset (default
    channel, grid_0, grid_1, ...; for a one-dimensional ``sample_shape``,
    grid_0). Returns the (n_members, *sample_shape) tensor, or, written to
    ``path`` (``.nc`` for netCDF, ``.zarr`` for zarr; resumed if present),
    the Dataset opened lazily from it (memory stays bounded).
    """
    sampler = _sampler_of(denoiser_or_sampler, scheduler, timesteps, method)
    n_members = check_positive_int("n_members", n_members)
    chunk = check_positive_int("chunk", chunk)
    seed = check_seed("seed", seed)
    sample_shape = tuple(sample_shape)
    if len(sample_shape) < 1 or any(isinstance(s, bool) or not isinstance(
            s, int) or s < 1 for s in sample_shape):
        raise ValueError("sample_shape must be (channel, grid...) of positive "
                         f"ints, got {sample_shape!r}")
    if dims is None:
        dims = [f"grid_{d}" for d in range(len(sample_shape) - 1)]
        dims = ["grid_0"] if len(sample_shape) == 1 else ["channel"] + dims
    dims = list(dims)
    if len(dims) != len(sample_shape) or len(set(dims)) != len(dims) or \
            "member" in dims or not all(isinstance(d, str) for d in dims):
        raise ValueError(f"dims must name the {len(sample_shape)} sample "
                         f"dimensions with distinct strings other than "
                         f"'member', got {dims!r}")
    if mask is not None:
        check_mask(mask, torch.empty((1,) + sample_shape, device=mask.device),
                   like_name="a member")
    conditioning = dict(conditioning or {})
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or None, got {type(path).__name__}")
    path = None if path is None else os.fspath(path)
    attrs = _attributes(sampler, seed, n_members)
    start = 0 if path is None else _members_written(path, attrs)
    results = []
    with tqdm(total=n_members, initial=start, disable=not progress,
              desc="members") as bar:
        while start < n_members:
            stop = min(start + chunk, n_members)
            cond = {name: value[start:stop] if isinstance(
                value, torch.Tensor) and value.ndim > 0 and
                value.shape[0] == n_members else value
                for name, value in conditioning.items()}
            members = sampler.sample((stop - start,) + sample_shape,
                                     mask=mask, seed=seed,
                                     member_offset=start, **cond)
            if path is None:
                results.append(members)
            else:
                _write_chunk(path, members, start, mask, attrs, dims)
            bar.update(stop - start)
            start = stop
    return torch.cat(results) if path is None else _open(path)
