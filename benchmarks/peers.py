"""The peer libraries, loaded if present: k-diffusion and diffusers.

Both are optional (``pip install -r benchmarks/requirements.txt``; read
that file's notes first). A peer that is absent or fails to import is
reported as unavailable with the reason; nothing here raises.

k-diffusion's package ``__init__`` imports its whole training stack
(torchvision, kornia, clip, wandb, ...); on a machine where torchvision does
not import beside the installed torch (a CPU build of torch with PyPI's
torchvision, say) the package cannot be imported although its sampler code
needs none of it. In that case ``k_diffusion/sampling.py`` of the installed
package is loaded alone, with a stand-in for the one helper it takes from
``k_diffusion.utils`` (``append_dims``, copied verbatim); the report says so.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import types
from dataclasses import dataclass
from typing import Dict, Optional

__all__ = ["Peer", "kdiffusion", "diffusers", "describe"]


@dataclass
class Peer:
    name: str
    module: Optional[types.ModuleType]
    version: Optional[str]
    how: str = ""              # how it was loaded
    reason: str = ""           # why it is unavailable

    def describe(self) -> Dict:
        return {"available": self.module is not None, "version": self.version,
                "loaded": self.how or None, "reason": self.reason or None}


_CACHE: Dict[str, Peer] = {}


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _append_dims(x, target_dims):
    """Appends dimensions to the end of a tensor until it has target_dims dimensions."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f'input has {x.ndim} dims but target_dims is {target_dims}, which is less')
    return x[(...,) + (None,) * dims_to_append]


def _kdiffusion_sampling_alone():
    spec = importlib.util.find_spec("k_diffusion")  # locates, does not import
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k_diffusion is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "sampling.py")
    package = types.ModuleType("_bench_k_diffusion")
    package.__path__ = []
    utils = types.ModuleType("_bench_k_diffusion.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules["_bench_k_diffusion"] = package
    sys.modules["_bench_k_diffusion.utils"] = utils
    loader_spec = importlib.util.spec_from_file_location(
        "_bench_k_diffusion.sampling", path)
    module = importlib.util.module_from_spec(loader_spec)
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        for key in ("_bench_k_diffusion", "_bench_k_diffusion.utils"):
            sys.modules.pop(key, None)
        raise
    return module


def kdiffusion() -> Peer:
    if "k-diffusion" not in _CACHE:
        version = _version("k-diffusion")
        try:
            module = importlib.import_module("k_diffusion.sampling")
            peer = Peer("k-diffusion", module, version, "import k_diffusion.sampling")
        except Exception as exc:
            first = _error(exc)
            if version is None:
                peer = Peer("k-diffusion", None, None,
                            reason=f"not installed ({first})")
            else:
                try:
                    module = _kdiffusion_sampling_alone()
                    peer = Peer("k-diffusion", module, version,
                                how="k_diffusion/sampling.py loaded alone "
                                    f"(import k_diffusion failed: {first})")
                except Exception as exc2:
                    peer = Peer("k-diffusion", None, version,
                                reason=f"import k_diffusion failed ({first}); "
                                       f"loading sampling.py alone failed "
                                       f"({_error(exc2)})")
        _CACHE["k-diffusion"] = peer
    return _CACHE["k-diffusion"]


def diffusers() -> Peer:
    if "diffusers" not in _CACHE:
        version = _version("diffusers")
        try:
            module = importlib.import_module("diffusers")
            # the lazy module resolves these on first access: import them now
            for name in ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler"):
                getattr(module, name)
            peer = Peer("diffusers", module, version, "import diffusers")
        except Exception as exc:
            reason = _error(exc)
            peer = Peer("diffusers", None, version,
                        reason=reason if version else f"not installed ({reason})")
        _CACHE["diffusers"] = peer
    return _CACHE["diffusers"]


def describe() -> Dict[str, Dict]:
    return {p.name: p.describe() for p in (kdiffusion(), diffusers())}
