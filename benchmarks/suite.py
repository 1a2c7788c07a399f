"""Benchmark suite: the fused ops against eager PyTorch and torch.compile.

Each case is one memory-bound piece of a diffusion training or sampling step,
written three ways:

- ``eager``: the chain of PyTorch ops users write today (``randn_like``, the
  noise kept for the loss, one pass per operation);
- ``compiled``: that same eager function under ``torch.compile``;
- ``ddm_fast[<backend>]``: the fused ops on each available backend.

Throughput is reported as GB/s of *necessary* traffic (each input read once,
each output written once; the mask and per-sample vectors are negligible),
and as a fraction of the device's memory roofline, measured here as the
bandwidth of a large device-to-device copy. Timings on shared machines are
noisy: compare ratios within one run, never absolute numbers across runs.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from ddm_fast.loss import diffusion_loss

import ddm_fast
from ddm_fast import backends, ops
from ddm_fast.utils import alpha_sigma

__all__ = ["run_suite", "SHAPES"]

# (name, shape) per device type: a Lorenz-96 batch, a regional ocean batch,
# and on GPU one global 0.25° field with 80 channels (the target size).
SHAPES = {
    "cpu": [("l96_1024x40", (1024, 40)), ("regional_16x4x256x256", (16, 4, 256, 256))],
    "cuda": [("l96_4096x40", (4096, 40)),
             ("regional_16x8x256x512", (16, 8, 256, 512)),
             ("global_1x80x721x1440", (1, 80, 721, 1440))],
}


@dataclass
class Result:
    case: str
    shape: List[int]
    dtype: str
    impl: str
    ms: float
    gbps: float
    roofline_fraction: float
    speedup_vs_eager: float = float("nan")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device, min_time: float = 0.2,
          max_reps: int = 200) -> float:
    """Median milliseconds per call after warm-up."""
    for _ in range(3):
        fn()
    _sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - start_all < min_time
                                     or len(times) < 5):
        if device.type == "cuda":
            begin = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth(device, nbytes: int = 1 << 28) -> float:
    """GB/s of a large copy (read + write): the practical memory roofline."""
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    ms = _time(lambda: dst.copy_(src), device)
    return 2 * n * 4 / ms / 1e6


def _mask_for(shape, device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    if len(shape) == 4:
        m = torch.rand((1, 1) + tuple(shape[2:]), generator=gen) > 0.3
    else:
        m = torch.rand((1,) + tuple(shape[1:]), generator=gen) > 0.3
    return m.to(device)


def _cases(shape, dtype, device):
    """name -> (bytes moved, eager fn builder, fused fn builder)."""
    batch = shape[0]
    numel = 1
    for s in shape:
        numel *= s
    item = torch.tensor([], dtype=dtype).element_size()
    x = torch.randn(shape, device=device, dtype=dtype)
    f = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    mask = _mask_for(shape, device)
    gamma = torch.linspace(-5, 5, batch, device=device)
    view = (batch,) + (1,) * (len(shape) - 1)
    # the eager chain as a careful user writes it: coefficients in the data's
    # dtype (float32 coefficients would promote a bf16 chain to float32)
    alpha, sigma = (v.to(dtype) for v in alpha_sigma(gamma))

    def eager_randn():
        return torch.randn_like(x)

    def fused_randn():
        return ops.randn(shape, 1234, dtype=dtype, device=device)

    def eager_diffuse():
        noise = torch.randn_like(x)
        return (alpha.view(view) * x + sigma.view(view) * noise) * mask

    def fused_diffuse():
        return ops.diffuse(x, gamma, 1234, mask=mask)

    def eager_loss():
        noise = torch.randn_like(x)
        z = (alpha.view(view) * x + sigma.view(view) * noise) * mask
        err = (f - noise).pow(2) * mask
        loss = err.sum() / (mask.expand_as(err).sum() + 1e-9)
        f.grad = None  # no accumulation: an uncounted read-modify-write
        loss.backward()
        return z

    def fused_loss():
        z = ops.diffuse(x, gamma, 1234, mask=mask)
        loss, _ = diffusion_loss(f, x, gamma, 1234, mask=mask)
        f.grad = None
        loss.backward()
        return z

    x_prev = torch.randn(shape, device=device, dtype=dtype)
    c = torch.rand(batch, 4, device=device)
    c_eager = c.to(dtype)

    def eager_step():  # a DPM-Solver++(2M)-like step with fresh noise
        noise = torch.randn_like(x)
        out = (c_eager[:, 0].view(view) * x + c_eager[:, 1].view(view) * x_prev
               + c_eager[:, 2].view(view) * f.detach()
               + c_eager[:, 3].view(view) * noise)
        return out * mask

    def fused_step():
        return ops.affine([x, x_prev, f.detach()], c, mask=mask, seed=7)

    def eager_mean():
        return (x * mask).sum(dim=tuple(range(1, x.ndim))) / (
            mask.expand_as(x).sum(dim=tuple(range(1, x.ndim))) + 1e-9)

    def fused_mean():
        return ops.masked_mean(x, mask, dim=tuple(range(1, x.ndim)))

    return {
        # write the noise
        "randn": (numel * item, eager_randn, fused_randn),
        # read x, write z
        "diffuse": (2 * numel * item, eager_diffuse, fused_diffuse),
        # forward: read x, write z, read f and x; backward: read f, x, write grad
        "train_step_ops": (7 * numel * item, eager_loss, fused_loss),
        # read three tensors, write one
        "sampler_step": (4 * numel * item, eager_step, fused_step),
        # read x
        "masked_mean": (numel * item, eager_mean, fused_mean),
    }


def run_suite(device: Optional[str] = None, dtypes=("float32", "bfloat16"),
              compile_baseline: bool = True, quick: bool = False) -> Dict:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    roofline = copy_bandwidth(device, nbytes=(1 << 24) if quick else (1 << 28))
    impls = [b for b in backends.available() if b != "triton" or device.type == "cuda"]
    if device.type == "cpu":
        impls = [b for b in impls if b != "cuda"]
    results: List[Result] = []
    shapes = SHAPES[device.type][:1] if quick else SHAPES[device.type]
    for shape_name, shape in shapes:
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            for case, (nbytes, eager, fused) in _cases(shape, dtype, device).items():
                timings = {"eager": _time(eager, device)}
                if compile_baseline:
                    try:
                        compiled = torch.compile(eager)
                        timings["compiled"] = _time(compiled, device)
                    except Exception as exc:  # report, do not hide
                        print(f"torch.compile failed for {case}: {exc}")
                for name in impls:
                    with backends.use(name):
                        timings[f"ddm_fast[{name}]"] = _time(fused, device)
                for impl, ms in timings.items():
                    gbps = nbytes / ms / 1e6
                    results.append(Result(
                        case=case, shape=list(shape), dtype=dtype_name, impl=impl,
                        ms=ms, gbps=gbps, roofline_fraction=gbps / roofline,
                        speedup_vs_eager=timings["eager"] / ms))
                    print(f"{case:15s} {shape_name:24s} {dtype_name:9s} "
                          f"{impl:22s} {ms:9.3f} ms {gbps:8.1f} GB/s "
                          f"{100 * gbps / roofline:5.1f}% x{timings['eager'] / ms:5.2f}")
    return {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else platform.processor() or platform.machine()),
        "device_type": device.type,
        "torch": torch.__version__,
        "ddm_fast": ddm_fast.__version__,
        "copy_bandwidth_gbps": roofline,
        "backends": impls,
        "results": [asdict(r) for r in results],
    }


def write_json(report: Dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
