"""Timers, the copy roofline and peak memory, per device type.

GPU (CUDA):
  - :func:`cuda_times` runs ``triton.testing.do_bench`` (the L2 cache is
    flushed before every call, gradients listed in ``grads`` are set to None
    before every call, outside the timed region) or, for launch-bound small
    shapes, ``triton.testing.do_bench_cudagraph`` (many calls replayed from
    one CUDA graph: no launch overhead, no L2 flush). A function that cannot
    be captured falls back to ``do_bench``; the result says which ran.
  - peak memory: ``torch.cuda.max_memory_allocated`` over one call, minus
    what was allocated before it.

CPU:
  - :func:`cpu_times` interleaves the implementations of one case
    (A B C A B C ...) after a warm-up, so that a slow drift of the machine
    (other processes, frequency, thermal) spreads over all of them alike.
    Before every timed call the last-level cache is flushed (a buffer of
    twice its size is written) and listed gradients are set to None; both
    outside the timed region. Each call is timed alone (perf_counter).
  - the roofline is a cache-cold copy much larger than the last-level cache
    (512 MiB; 64 MiB with ``--quick``).
  - peak memory: the peak of tensor bytes allocated through PyTorch's CPU
    allocator during one call, minus what was allocated before it, read
    from the profiler's allocation records (``profile_memory=True``); not
    the process RSS, which the allocator's caching and glibc blur.

Every timer reports the 20th, 50th and 80th percentiles.
"""
from __future__ import annotations

import contextlib
import gc
import glob
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

QUANTILES = (0.2, 0.5, 0.8)


@dataclass
class Impl:
    """One implementation of a case: ``fn()`` is timed; ``setup()`` (not
    timed) runs before each call; ``grads`` are set to None before each
    call (no gradient accumulation)."""
    fn: Callable[[], object]
    setup: Optional[Callable[[], None]] = None
    grads: Sequence[torch.Tensor] = field(default_factory=list)
    cudagraph_ok: bool = True      # may be captured as a CUDA graph

    def prepare(self) -> None:
        if self.setup is not None:
            self.setup()
        for g in self.grads:
            g.grad = None


def percentiles(values: Sequence[float], qs=QUANTILES) -> List[float]:
    """Linear-interpolation percentiles (numpy's default method)."""
    v = sorted(values)
    if not v:
        return [float("nan")] * len(qs)
    out = []
    for q in qs:
        pos = q * (len(v) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(v) - 1)
        out.append(v[lo] + (v[hi] - v[lo]) * (pos - lo))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ CPU
def llc_bytes() -> int:
    """Size of the largest CPU cache (sysfs), 32 MiB when unknown."""
    best = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            text = open(path, encoding="ascii").read().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text[:-1] if text[-1:] in "KMG" else text
        if digits.isdigit():
            best = max(best, int(digits) * mult)
    return best or (32 << 20)


class CacheFlusher:
    """Writes a buffer of twice the last-level cache: what was cached is
    evicted (write-allocate brings the buffer's lines in)."""

    def __init__(self, nbytes: Optional[int] = None):
        self.nbytes = nbytes if nbytes is not None else 2 * llc_bytes()
        self.buf = torch.empty(self.nbytes // 4, dtype=torch.float32)
        self.k = 0

    def __call__(self) -> None:
        self.k += 1
        self.buf.fill_(float(self.k & 0xFF))


def cpu_times(impls: Dict[str, Impl], *, warmup: int = 2, min_reps: int = 5,
              max_reps: int = 100, budget_s: float = 2.0,
              flush: Optional[Callable[[], None]] = None,
              on_error: Optional[Callable[[str, BaseException], None]] = None
              ) -> Dict[str, Dict]:
    """Interleaved timing of the implementations of one case.

    Returns name -> {"times_ms": [...], "warmup_s": [first call, ...]}.
    Stops after ``max_reps`` rounds, or after ``min_reps`` rounds once
    ``budget_s`` seconds of timed calls are spent. An implementation that
    raises is reported through ``on_error`` and dropped.
    """
    live = dict(impls)
    out: Dict[str, Dict] = {name: {"times_ms": [], "warmup_s": []} for name in impls}
    for name, impl in list(live.items()):
        try:
            for _ in range(warmup):
                impl.prepare()
                t0 = time.perf_counter()
                impl.fn()
                out[name]["warmup_s"].append(time.perf_counter() - t0)
        except Exception as exc:  # report it, keep the others
            live.pop(name)
            out.pop(name)
            if on_error is None:
                raise
            on_error(name, exc)
    spent = 0.0
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for rep in range(max_reps):
            if rep >= min_reps and spent >= budget_s:
                break
            for name, impl in list(live.items()):
                impl.prepare()
                if flush is not None:
                    flush()
                try:
                    t0 = time.perf_counter()
                    impl.fn()
                    dt = time.perf_counter() - t0
                except Exception as exc:
                    live.pop(name)
                    out.pop(name)
                    if on_error is None:
                        raise
                    on_error(name, exc)
                    continue
                spent += dt
                out[name]["times_ms"].append(dt * 1e3)
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C++ profiler's start/stop lines on fd 2."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def cpu_peak_bytes(impl: Impl) -> Optional[int]:
    """Peak of tensor bytes allocated during one call of ``impl.fn`` (above
    what was allocated when it started), from the profiler's allocation
    records; None when the profiler does not expose them."""
    from torch.profiler import ProfilerActivity, profile
    impl.prepare()
    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = impl.fn()
            del result
    try:
        events = prof.profiler.kineto_results.events()
        mem = sorted((e.start_ns(), e.nbytes()) for e in events
                     if e.name() == "[memory]"
                     and str(e.device_type()).endswith("CPU"))
    except Exception:  # private API moved: report unknown, never guess
        return None
    current = peak = 0
    for _, nbytes in mem:
        current += nbytes
        peak = max(peak, current)
    return peak


def cpu_copy_roofline(nbytes: int, reps: int = 10) -> Dict:
    """Cache-cold copy of ``nbytes`` (read + write = 2 * nbytes moved)."""
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src).fill_(0.0)
    dst.copy_(src)  # warm-up: page-in, threads up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append((time.perf_counter() - t0) * 1e3)
    return _roofline_result(nbytes, times, "cpu copy_ (cache-cold: "
                            f"{nbytes >> 20} MiB >> LLC {llc_bytes() >> 20} MiB), "
                            f"{torch.get_num_threads()} threads")


def _roofline_result(nbytes, times_ms, method) -> Dict:
    p20, p50, p80 = percentiles(times_ms)
    moved = 2 * nbytes
    return {"copy_bytes": nbytes, "bytes_moved": moved, "method": method,
            "ms": {"p20": p20, "p50": p50, "p80": p80},
            "gbps": moved / p50 / 1e6, "reps": len(times_ms)}


# ----------------------------------------------------------------- CUDA
def cuda_times(impl: Impl, *, cudagraph: bool, quick: bool = False) -> Dict:
    """20/50/80th percentile milliseconds of one implementation on CUDA.

    ``do_bench`` flushes L2 before every call and resets ``impl.grads``;
    ``do_bench_cudagraph`` (launch-bound shapes) replays the calls from a
    graph. ``impl.setup`` runs inside the timed call here (``do_bench`` has
    no untimed hook): the functions keep it host-side and cheap.
    """
    import triton.testing as tt

    def fn():
        if impl.setup is not None:
            impl.setup()
        return impl.fn()

    grads = list(impl.grads) or None
    warmup, rep = (5, 20) if quick else (25, 100)
    method = "do_bench"
    note = None
    if cudagraph and impl.cudagraph_ok:
        try:
            q = tt.do_bench_cudagraph(fn, rep=rep, grad_to_none=grads,
                                      quantiles=list(QUANTILES))
            return {"ms": q, "method": "do_bench_cudagraph", "note": None}
        except Exception as exc:  # not capturable: say so, time it plainly
            note = f"CUDA graph capture failed ({type(exc).__name__}: {exc}); do_bench used"
            torch.cuda.synchronize()
    q = tt.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grads,
                    quantiles=list(QUANTILES))
    return {"ms": q, "method": method, "note": note}


def cuda_peak_bytes(impl: Impl, device: torch.device) -> int:
    impl.prepare()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = impl.fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del result
    return int(peak)


def cuda_copy_roofline(nbytes: int, device: torch.device, quick: bool = False) -> Dict:
    import triton.testing as tt
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    q = tt.do_bench(lambda: dst.copy_(src), warmup=5 if quick else 25,
                    rep=20 if quick else 100, quantiles=list(QUANTILES))
    moved = 2 * nbytes
    return {"copy_bytes": nbytes, "bytes_moved": moved,
            "method": f"triton.testing.do_bench of a {nbytes >> 20} MiB device copy_",
            "ms": {"p20": q[0], "p50": q[1], "p80": q[2]},
            "gbps": moved / q[1] / 1e6, "reps": None}
