"""The library's one seed scheme.

Every random stream in ddm_fast (a sampler's prior sample and the noise of
each step, the training loss noise, the data order, data transforms,
validation) is named by a base seed and a path of non-negative integers, and
its seed is :func:`derive_seed` of them: splitmix64 applied along the path,

    s_0 = splitmix64(seed),  s_{k+1} = splitmix64(s_k + part_k * φ64),

returned as ``s_n >> 1`` (a Python int in [0, 2**63), the range the kernels'
Philox key accepts). Distinct paths give unrelated streams; the same path
gives the same stream on every backend and machine. A base seed that the
user did not give is drawn once by :func:`draw_seed` from a CPU generator
(no device synchronisation, reproducible under ``torch.manual_seed``).

Path conventions (the first part is a tag so that the users never collide):

* samplers: ``derive_seed(seed, 0)`` for the prior sample, ``derive_seed(seed,
  i + 1)`` for step i's noise (:func:`ddm_fast.sampling.noise_seed`);
* training: ``derive_seed(seed, TAG, ...)`` with the tags below.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._validation import check_seed

__all__ = ["derive_seed", "draw_seed", "check_seed",
           "TAG_PERMUTATION", "TAG_TRANSFORM", "TAG_VALIDATION", "TAG_LOADER",
           "TAG_LOSS"]

_MASK64 = (1 << 64) - 1
_GOLDEN64 = 0x9E3779B97F4A7C15

# Stream tags of the training loop (the samplers use parts 0, 1, 2, ... for
# the prior and the steps; training streams start at 2**32 so they never
# meet a sampler stream of the same base seed).
TAG_PERMUTATION = 2 ** 32 + 1
TAG_TRANSFORM = 2 ** 32 + 2
TAG_VALIDATION = 2 ** 32 + 3
TAG_LOADER = 2 ** 32 + 4
TAG_LOSS = 2 ** 32 + 5


def _splitmix64(value: int) -> int:
    value = (value + _GOLDEN64) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def derive_seed(seed: int, *path: int) -> int:
    """Seed of the stream named by ``path`` under base ``seed`` (see the
    module docstring); a Python int in [0, 2**63)."""
    check_seed("seed", seed)
    state = _splitmix64(seed)
    for position, part in enumerate(path):
        if isinstance(part, bool) or not isinstance(part, int) or part < 0:
            raise ValueError(
                f"seed path part {position} must be a non-negative int, "
                f"got {part!r}")
        state = _splitmix64((state + part * _GOLDEN64) & _MASK64)
    return state >> 1


def draw_seed(seed: Optional[int] = None,
              generator: Optional[torch.Generator] = None) -> int:
    """``seed`` itself when given (checked), else a fresh base seed drawn
    from ``generator`` or torch's global CPU generator: a CPU draw, so no
    device synchronisation, and reproducible under ``torch.manual_seed``."""
    if seed is not None:
        return check_seed("seed", seed)
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator,
                             dtype=torch.int64)[0])


# ------------------------------------------------- the seed on the device
# The kernels take the seed of their noise either by value (a Python int,
# baked into the launch) or as a *seed word*: a one-element int64 tensor on
# the data's device that the kernel reads when it runs. A CUDA graph captured
# with a seed word replays with whatever seed the word holds then, so one
# capture serves every seed (the word is updated in place between replays,
# the way flash-attention and TransformerEngine keep their Philox state on
# the device). The same seed gives the same noise either way.

def seed_word(seed: int, device=None) -> torch.Tensor:
    """A seed word holding ``seed`` on ``device``."""
    check_seed("seed", seed)
    return torch.tensor([seed], dtype=torch.int64, device=device)


def kernel_seed(seed, device: torch.device):
    """(value, word) for a primitive's ``seed`` argument: an int (−1: no
    noise) gives (seed, None); a seed word gives (−1, word) after checking
    it is a one-element contiguous int64 tensor on ``device``."""
    if isinstance(seed, torch.Tensor):
        if (seed.dtype != torch.int64 or seed.numel() != 1
                or not seed.is_contiguous()):
            raise ValueError(
                f"a seed word must be a contiguous one-element int64 tensor, "
                f"got {seed.dtype} of shape {tuple(seed.shape)}")
        if seed.device != torch.device(device):
            raise ValueError(f"the seed word is on {seed.device}, the data "
                             f"on {device}")
        return -1, seed
    return seed, None


def has_noise(seed) -> bool:
    """Whether a primitive's ``seed`` argument asks for a noise column."""
    return isinstance(seed, torch.Tensor) or seed >= 0
