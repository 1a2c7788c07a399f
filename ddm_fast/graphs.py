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

:class:`GraphedLoop` does the bookkeeping for one loop function: one capture
per input signature (names, shapes, dtypes, devices and the number of noise
streams), a warm-up on a side stream before capturing (lazy initialisation,
Triton compilation and cuBLAS workspaces must not happen inside a capture),
and a clear error when something in the loop cannot be captured (a host
synchronisation, a CPU tensor, data-dependent Python control flow).
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import torch

__all__ = ["GraphedLoop", "GraphCaptureError"]

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


class GraphedLoop:
    """A loop function ``loop(tensors, seeds) -> Tensor`` run as a CUDA graph.

    ``tensors``: the loop's inputs by name (static buffers at replay);
    ``seeds``: a device int64 tensor whose element k is the seed of noise
    stream k (take seed words as ``seeds[k:k + 1]``). Call with the actual
    tensors and the list of seeds (Python ints); the first call of each
    input signature warms up and captures, every call replays.
    """

    def __init__(self, loop: Callable[[Dict[str, torch.Tensor], torch.Tensor],
                                      torch.Tensor],
                 max_captures: int = 8):
        self.loop = loop
        self.max_captures = max_captures
        self._captures: Dict[Tuple, _Capture] = {}

    def __call__(self, tensors: Dict[str, torch.Tensor],
                 seeds: Sequence[int]) -> torch.Tensor:
        device = self._device(tensors)
        key = _signature(tensors, len(seeds))
        capture = self._captures.get(key)
        if capture is None:
            if len(self._captures) >= self.max_captures:
                # bounded memory: drop the oldest capture and its buffers
                self._captures.pop(next(iter(self._captures)))
            capture = _Capture(self.loop, tensors, len(seeds), device)
            self._captures[key] = capture
        return capture.replay(tensors, seeds)

    @staticmethod
    def _device(tensors: Dict[str, torch.Tensor]) -> torch.device:
        devices = {t.device for t in tensors.values()}
        if len(devices) != 1 or next(iter(devices)).type != "cuda":
            found = ", ".join(sorted(str(d) for d in devices)) or "none"
            raise ValueError(
                f"graph=True needs every input of the loop on one CUDA "
                f"device, got {found}; use graph=False on CPU")
        return next(iter(devices))

    def clear(self) -> None:
        """Drop every capture and its static buffers."""
        self._captures.clear()

