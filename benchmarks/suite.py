"""Benchmark suite v2: the fused ops, whole training and sampling steps and
the peer samplers, on workloads named after their users.

:func:`run_suite` measures and returns the report (a JSON-ready dict, schema
in ``benchmarks/README.md``); :mod:`.timing` holds the method (GPU:
``triton.testing.do_bench`` / ``do_bench_cudagraph``; CPU: interleaved
repetitions, cache flushed, against a cache-cold copy roofline),
:mod:`.cases` the implementations and the table of necessary bytes,
:mod:`.workloads` the shapes and masks, :mod:`.report` the markdown table
and the roofline plot.

Timings on shared machines are noisy: compare implementations within one
run (they are interleaved on CPU), never absolute numbers across runs.
"""
from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import subprocess
from typing import Callable, Dict, List, Optional, Sequence

import torch

import ddm_fast
from ddm_fast import backends

from . import cases as cases_mod
from . import peers, timing, workloads as workloads_mod
from .cases import CASES, PEER_CASES, Context, Skip, necessary_bytes

__all__ = ["run_suite", "write_json", "SCHEMA", "benchmarked_backends"]

SCHEMA = "ddm_fast-benchmarks/2"
REPO_ROOT = cases_mod.REPO_ROOT


# ------------------------------------------------------------ metadata
def _git() -> Dict:
    def git(*args):
        return subprocess.run(["git", "-C", REPO_ROOT, *args], capture_output=True,
                              text=True, timeout=20).stdout.strip()
    try:
        rev = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return {"revision": rev or None, "dirty": dirty if rev else None}
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_info(device: torch.device) -> Dict:
    info = {"type": device.type, "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "llc_bytes": timing.llc_bytes()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device),
                    total_memory_bytes=props.total_memory,
                    multiprocessors=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}")
    else:
        info["name"] = info["cpu"]
    return info


def _versions() -> Dict:
    import importlib.metadata as md
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "ddm_fast": ddm_fast.__version__,
           "ddm_fast_path": os.path.dirname(ddm_fast.__file__),
           "cuda": torch.version.cuda}
    for dist in ("triton", "numpy", "matplotlib", "k-diffusion", "diffusers"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def benchmarked_backends(device: torch.device) -> Dict:
    """The ddm_fast backends run on ``device`` (triton only on CUDA: on CPU
    it is Triton's interpreter, a test tool), and why the others are not."""
    run, skipped = [], {}
    for name in backends.NAMES:
        devices = backends.REGISTRY[name].devices
        reason = backends.why_unavailable(name)
        if device.type not in devices or (name == "triton" and device.type != "cuda"):
            skipped[name] = f"not a {device.type} backend" if name != "triton" \
                else "CPU runs Triton only through its interpreter (tests)"
        elif reason is not None:
            skipped[name] = reason
        else:
            run.append(name)
    return {"benchmarked": run, "not_benchmarked": skipped}


# ----------------------------------------------------------- measuring
def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().item() if b.numel() else 0.0
    return (a - b).abs().max().item() / (scale or 1.0) if b.numel() else 0.0


def _check(case, names: Sequence[str], dtype) -> Dict[str, Dict]:
    """Outputs of every implementation against the baseline's."""
    base = case.baseline if case.baseline in names else None
    if base is None:
        return {}
    outs = {}
    for name in names:
        impl = case.impls[name]
        impl.prepare()
        out = impl.fn()
        out = case.convert.get(name, lambda t: t)(out)
        outs[name] = out.detach()
    tol = cases_mod.CHECK_TOL.get(dtype, 1e-4)
    result = {}
    for name, out in outs.items():
        if name == base:
            continue
        err = _rel_err(out, outs[base]) if out.shape == outs[base].shape else float("inf")
        result[name] = {"vs": base, "max_rel_err": err, "tol": tol,
                        "ok": bool(err <= tol)}
    return result


def _cpu_measure(case, quick: bool, budget_s: float, flusher, errors: Dict) -> Dict:
    def on_error(name, exc):
        errors[name] = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
    params = dict(warmup=1, min_reps=3, max_reps=3, budget_s=0.0) if quick else \
        dict(warmup=2, min_reps=5, max_reps=50, budget_s=budget_s)
    raw = timing.cpu_times(case.impls, flush=flusher, on_error=on_error, **params)
    out = {}
    for name, r in raw.items():
        q = timing.percentiles(r["times_ms"])
        out[name] = {"ms": q, "times_ms": r["times_ms"],
                     "timer": "cpu: interleaved, LLC flushed", "timer_note": None,
                     "warmup_s": r["warmup_s"][0] if r["warmup_s"] else None}
    return out


def _cuda_measure(case, quick: bool, launch_bound: bool, errors: Dict) -> Dict:
    out = {}
    for name, impl in case.impls.items():
        try:
            import time
            t0 = time.perf_counter()
            impl.prepare()
            impl.fn()  # first call: compiles (torch.compile, Triton JIT)
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            r = timing.cuda_times(impl, cudagraph=launch_bound, quick=quick)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
            torch.cuda.synchronize()
            continue
        out[name] = {"ms": list(r["ms"]), "times_ms": None,
                     "timer": r["method"], "timer_note": r["note"],
                     "warmup_s": first}
    return out


def _peak(impl, device) -> Optional[int]:
    try:
        if device.type == "cuda":
            return timing.cuda_peak_bytes(impl, device)
        return timing.cpu_peak_bytes(impl)
    except Exception:
        return None


def run_suite(device: Optional[str] = None, workload: str = "",
              dtypes: Optional[Sequence[str]] = None, compile_baseline: bool = True,
              quick: bool = False, with_peers: bool = True,
              case_names: Optional[Sequence[str]] = None, budget_s: float = 2.0,
              log: Callable[[str], None] = print,
              command: Optional[str] = None,
              only_backends: Optional[Sequence[str]] = None) -> Dict:
    """Run the suite; returns the report (see ``benchmarks/README.md``)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device}")
    chosen = workloads_mod.get(workload, device.type, quick)
    if dtypes is None:
        dtypes = ("float32",) if device.type == "cpu" or quick else ("float32", "bfloat16")
    for d in dtypes:
        if not isinstance(getattr(torch, d, None), torch.dtype):
            raise ValueError(f"unknown dtype {d!r}")
    names = list(case_names) if case_names else list(CASES)
    for n in names:
        if n not in CASES:
            raise ValueError(f"unknown case {n!r}; choose from {', '.join(CASES)}")
    be = benchmarked_backends(device)
    if only_backends:
        for name in only_backends:
            if name not in be["benchmarked"]:
                reason = be["not_benchmarked"].get(name, "not a ddm_fast backend")
                raise ValueError(f"backend {name!r} cannot be benchmarked here: {reason}")
        for name in list(be["benchmarked"]):
            if name not in only_backends:
                be["benchmarked"].remove(name)
                be["not_benchmarked"][name] = "left out (--backends)"
    started = datetime.datetime.now(datetime.timezone.utc)

    log(f"ddm_fast benchmarks on {device} ({_device_info(device)['name']}), "
        f"ddm_fast {ddm_fast.__version__} from {os.path.dirname(ddm_fast.__file__)}")
    log(f"backends benchmarked: {', '.join(be['benchmarked'])}"
        + "".join(f"\n  not {k}: {v}" for k, v in be["not_benchmarked"].items()))

    # roofline: a copy much larger than the last-level cache
    if device.type == "cuda":
        roof = timing.cuda_copy_roofline((256 << 20) if quick else (1 << 30), device, quick)
        flusher = None
    else:
        roof = timing.cpu_copy_roofline((64 << 20) if quick else (512 << 20),
                                        reps=3 if quick else 10)
        flusher = timing.CacheFlusher()
    copy_gbps = roof["gbps"]
    log(f"copy roofline: {copy_gbps:.1f} GB/s ({roof['method']})")

    peer_info = {}
    if with_peers and any(n in PEER_CASES for n in names):
        peer_info = peers.describe()
        for pname, info in peer_info.items():
            if info["available"]:
                log(f"peer {pname} {info['version']}: {info['loaded']}")
            else:
                log(f"peer {pname} unavailable, its cases are skipped: {info['reason']} "
                    "(pip install -r benchmarks/requirements.txt; see its notes)")

    results: List[Dict] = []
    skipped: List[Dict] = []
    failures: List[Dict] = []
    for wl in chosen:
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            ctx = Context(wl, dtype, device, be["benchmarked"], compile_baseline)
            for case_name in names:
                where = {"workload": wl.name, "case": case_name, "dtype": dtype_name}
                if case_name in PEER_CASES and not with_peers:
                    skipped.append({**where, "reason": "--no-peers"})
                    continue
                if compile_baseline:
                    torch._dynamo.reset()
                try:
                    case = CASES[case_name](ctx)
                except Skip as exc:
                    skipped.append({**where, "reason": str(exc)})
                    log(f"{wl.name:16s} {dtype_name:8s} {case_name:20s} skipped: {exc}")
                    continue
                except Exception as exc:  # report it, go on with the others
                    err = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
                    failures.append({**where, "impl": "(setting up the case)",
                                     "error": err})
                    log(f"{wl.name:16s} {dtype_name:8s} {case_name:20s} FAILED: {err}")
                    continue
                nbytes = necessary_bytes(case_name, ctx)
                errors: Dict[str, str] = {}
                if device.type == "cuda":
                    launch_bound = nbytes is not None and \
                        nbytes / (copy_gbps * 1e9) < 50e-6
                    measured = _cuda_measure(case, quick, launch_bound, errors)
                else:
                    measured = _cpu_measure(case, quick, budget_s, flusher, errors)
                for name, err in errors.items():
                    failures.append({**where, "impl": name, "error": err})
                    log(f"{wl.name:16s} {dtype_name:8s} {case_name:20s} {name:22s} "
                        f"FAILED: {err}")
                checks = {}
                if case.check:
                    try:
                        checks = _check(case, list(measured), dtype)
                    except Exception as exc:
                        failures.append({**where, "impl": "(check)",
                                         "error": f"{type(exc).__name__}: {exc}"})
                base_ms = measured.get(case.baseline, {}).get("ms")
                for name, m in measured.items():
                    per_step = [t / case.steps for t in m["ms"]]
                    p50 = per_step[1]
                    gbps = nbytes / p50 / 1e6 if nbytes is not None and p50 > 0 else None
                    row = {
                        **where, "group": case.group, "impl": name,
                        "shape": list(wl.shape), "steps_per_call": case.steps,
                        "bytes": nbytes,
                        "ms": {"p20": per_step[0], "p50": per_step[1],
                               "p80": per_step[2]},
                        "times_ms": None if m["times_ms"] is None else
                        [t / case.steps for t in m["times_ms"]],
                        "reps": None if m["times_ms"] is None else len(m["times_ms"]),
                        "timer": m["timer"], "timer_note": m["timer_note"],
                        "first_call_s": m["warmup_s"],
                        "gbps": gbps,
                        "roofline_fraction": None if gbps is None else gbps / copy_gbps,
                        "baseline": case.baseline,
                        "speedup_vs_baseline": None if base_ms is None else
                        base_ms[1] / m["ms"][1],
                        "peak_bytes": _peak(case.impls[name], device),
                        "check": checks.get(name),
                        "note": case.note or None,
                    }
                    results.append(row)
                    log(_line(row))
                    if row["check"] is not None and not row["check"]["ok"]:
                        log(f"  WARNING: output differs from {row['check']['vs']}: "
                            f"max relative error {row['check']['max_rel_err']:.3g} "
                            f"> {row['check']['tol']:g}")
                del case, measured
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            del ctx
    finished = datetime.datetime.now(datetime.timezone.utc)
    return {
        "schema": SCHEMA,
        "created": started.isoformat(timespec="seconds"),
        "duration_s": (finished - started).total_seconds(),
        "command": command,
        "quick": quick,
        "device": _device_info(device),
        "versions": _versions(),
        "git": _git(),
        "method": {
            "quantiles": list(timing.QUANTILES),
            "timer": ("triton.testing.do_bench (L2 flushed, grads reset); "
                      "do_bench_cudagraph where the necessary bytes take < 50 us "
                      "at copy bandwidth (launch-bound)") if device.type == "cuda" else
                     ("interleaved repetitions (A B C A B C ...) after warm-up, "
                      f"last-level cache flushed ({timing.llc_bytes() >> 20} MiB x 2 "
                      "written) and grads reset before each timed call"),
            "peak_memory": ("torch.cuda.max_memory_allocated over one call minus "
                            "memory_allocated before it") if device.type == "cuda" else
                           ("peak of tensor bytes allocated by PyTorch's CPU allocator "
                            "during one call, above what was allocated before it, from "
                            "torch.profiler allocation records (profile_memory=True); "
                            "not the process RSS"),
            "per_step": "peer cases run 4 sampler steps per call; their times, "
                        "bytes and GB/s are per step",
            "traffic": {k: (None if v is None else
                            {"reads": v[0], "writes": v[1], "what": v[2]})
                        for k, v in cases_mod.TRAFFIC.items()},
        },
        "roofline": roof,
        "backends": be,
        "peers": peer_info,
        "compile": compile_baseline,
        "dtypes": list(dtypes),
        "workloads": [w.describe() for w in chosen],
        "results": results,
        "skipped": skipped,
        "failures": failures,
    }


def _line(r: Dict) -> str:
    ms = r["ms"]
    gb = f"{r['gbps']:8.2f} GB/s {100 * r['roofline_fraction']:5.1f}%" \
        if r["gbps"] is not None else " " * 21
    sp = f"x{r['speedup_vs_baseline']:6.2f}" if r["speedup_vs_baseline"] else " " * 7
    pk = f"{r['peak_bytes'] / 2**20:9.2f} MiB" if r["peak_bytes"] is not None else ""
    return (f"{r['workload']:16s} {r['dtype']:8s} {r['case']:20s} {r['impl']:22s} "
            f"{ms['p50']:10.4f} ms [{ms['p20']:.4f}, {ms['p80']:.4f}] {gb} {sp} {pk}")


def write_json(report: Dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=1)
        fh.write("\n")
