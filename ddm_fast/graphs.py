"""Whole sampling loops captured once as CUDA graphs, replayed with fresh noise.

A sampling loop of tens of steps on a small grid (Lorenz-96's 1024 × 40, a
regional patch) spends most of its time launching kernels: the network's and
one fused op per step. Captured as one CUDA graph, the loop is a single
launch. Two things make that possible here:

* the noise of every step comes from a *seed word* (:mod:`ddm_fast.seeds`),
  a device int64 the kernels read when they run: the graph holds a table of
  seed words, and each replay first writes the new seeds into it, so a replay
  draws the noise of its own seed, bitwise the noise the eager loop draws;
* every tensor the loop reads (the initial state, the mask, the conditioning)
  lives in a static buffer that a replay overwrites in place.

:func:`run_graphed` does the bookkeeping: one capture per owner and input
signature (names, shapes, dtypes, devices, the number of noise streams and
a key for everything else), a warm-up on a side stream before capturing (lazy initialisation,
Triton compilation and cuBLAS workspaces must not happen inside a capture),
and a clear error when something in the loop cannot be captured (a host
synchronisation, a CPU tensor, data-dependent Python control flow).
"""
from __future__ import annotations

import weakref
from typing import Callable, Dict, Hashable, Sequence, Tuple

import torch

__all__ = ["run_graphed", "clear", "GraphCaptureError"]

#: eager runs on a side stream before capturing (PyTorch's recipe uses 3)
WARMUP_RUNS = 3


class GraphCaptureError(RuntimeError):
    """The sampling loop could not be captured as a CUDA graph."""


def _signature(tensors: Dict[str, torch.Tensor], n_seeds: int) -> Tuple:
    return (n_seeds,) + tuple(
        (name, tuple(t.shape), t.dtype, t.device)
        for name, t in sorted(tensors.items()))


class _Capture:
    """One captured graph with its static buffers."""

    def __init__(self, loop, tensors: Dict[str, torch.Tensor], n_seeds: int,
                 device: torch.device):
        self.static = {name: t.clone() for name, t in tensors.items()}
        self.seeds = torch.zeros(max(n_seeds, 1), dtype=torch.int64,
                                 device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                loop(self.static, self.seeds)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph):
                self.out = loop(self.static, self.seeds)
        except Exception as exc:  # noqa: BLE001 - re-raised with the reason
            raise GraphCaptureError(
                f"graph=True: the sampling loop could not be captured as a "
                f"CUDA graph ({type(exc).__name__}: {exc}). Everything the "
                f"loop runs, the network included, must be capturable: no "
                f"host synchronisation (.item(), printing tensors, "
                f"data-dependent Python branches), no CPU tensors, no "
                f"allocation outside PyTorch. Run with graph=False, or make "
                f"the network capturable.") from exc
        if not isinstance(self.out, torch.Tensor):
            raise GraphCaptureError(
                f"graph=True: the loop must return one tensor, got "
                f"{type(self.out).__name__}")

    def replay(self, tensors: Dict[str, torch.Tensor],
               seeds: Sequence[int]) -> torch.Tensor:
        for name, t in tensors.items():
            self.static[name].copy_(t)
        if len(seeds):
            self.seeds.copy_(torch.tensor(list(seeds), dtype=torch.int64))
        self.graph.replay()
        # the next replay overwrites the static output: hand out a copy
        return self.out.clone()


# one dict of captures per owner (a sampler, a model): captures die with it
_CACHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
#: captures kept per owner (each holds its static buffers and graph memory)
MAX_CAPTURES = 8


def run_graphed(owner, key: Hashable,
                loop: Callable[[Dict[str, torch.Tensor], torch.Tensor],
                               torch.Tensor],
                tensors: Dict[str, torch.Tensor],
                seeds: Sequence[int]) -> torch.Tensor:
    """Run ``loop(tensors, seeds)`` as a CUDA graph captured for ``owner``.

    ``tensors``: the loop's inputs by name (static buffers at replay);
    ``seeds``: the seeds of its noise streams (Python ints), handed to the
    loop as a device int64 tensor whose element k is stream k's seed (take
    seed words as ``seeds[k:k + 1]``). ``key`` names what else the loop
    depends on (step count, offsets, non-tensor arguments). The first call
    of each (key, input signature) warms up and captures; every call
    replays and returns a copy of the output.

    The graph reads the network's parameters where they are: updating them
    in place (``load_state_dict``, an optimizer step) is seen by the next
    replay; replacing them by new tensors is not (call :func:`clear`).
    """
    device = _device(tensors)
    captures = _CACHES.setdefault(owner, {})
    full_key = (key, _signature(tensors, len(seeds)))
    capture = captures.get(full_key)
    if capture is None:
        if len(captures) >= MAX_CAPTURES:
            captures.pop(next(iter(captures)))  # the oldest, with its buffers
        capture = _Capture(loop, tensors, len(seeds), device)
        captures[full_key] = capture
    return capture.replay(tensors, seeds)


def clear(owner) -> None:
    """Drop every capture of ``owner`` (and its static buffers)."""
    _CACHES.pop(owner, None)


def check_no_callback(callback) -> None:
    """A captured loop cannot call back into Python between its steps."""
    if callback is not None:
        raise ValueError("callback cannot be combined with graph=True: a "
                         "captured loop cannot call back into Python "
                         "between steps")


def split_keywords(prefix: str, keywords: Dict, tensors: Dict[str, torch.Tensor]):
    """Keyword arguments of a loop (conditioning, extra_args) for a capture:
    the tensors join ``tensors`` as static inputs named ``prefix + name``;
    the others are returned with a key naming them (part of the capture's
    key, since their values are baked into the graph)."""
    fixed = {}
    for name, value in keywords.items():
        if isinstance(value, torch.Tensor):
            tensors[prefix + name] = value
        else:
            fixed[name] = value
    return fixed, tuple(sorted((k, repr(v)) for k, v in fixed.items()))


def join_keywords(prefix: str, static: Dict[str, torch.Tensor], fixed: Dict):
    """The loop's keyword arguments inside the capture: ``fixed`` and the
    static buffers of the tensor ones (inverse of :func:`split_keywords`)."""
    keywords = dict(fixed)
    keywords.update((name[len(prefix):], t) for name, t in static.items()
                    if name.startswith(prefix))
    return keywords


def _device(tensors: Dict[str, torch.Tensor]) -> torch.device:
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        found = ", ".join(sorted(str(d) for d in devices)) or "none"
        raise ValueError(
            f"graph=True needs every tensor input of the loop on one CUDA "
            f"device, got {found}; use graph=False on CPU")
    return next(iter(devices))
