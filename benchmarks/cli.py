"""Command line of the benchmark suite (``python -m benchmarks --help``).

``python -m benchmarks`` works from any directory once the repository is
installed (``pip install -e .`` installs ``benchmarks`` next to
``ddm_fast``), and from the repository root without installing."""
from __future__ import annotations

import argparse
import datetime
import os
import re
import sys

DESCRIPTION = """\
Benchmark ddm_fast's fused ops, a whole training step and a whole Heun
sampling step against eager PyTorch, torch.compile and the peer samplers
(k-diffusion, diffusers), on workloads named after their users.
GPU: triton.testing.do_bench (L2 flushed) / do_bench_cudagraph for
launch-bound shapes. CPU: interleaved repetitions, cache flushed, against a
cache-cold copy roofline. Reports 20/50/80th percentiles and peak memory."""

EPILOG = """\
examples:
  python -m benchmarks --quick                       smoke run on tiny sizes
  python -m benchmarks --workload cpu_target --json out.json --markdown out.md --plot out.png
  python -m benchmarks --save                        full run into benchmarks/results/
  python -m benchmarks.readme benchmarks/results/<file>.json   README block from a result
peers: pip install -r benchmarks/requirements.txt (read its notes first)."""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "device"


def table_heading(rep) -> list:
    """The lines printed above the results table: what was measured, where,
    and what the numbers are."""
    dev = rep["device"]
    where = dev["name"] if dev["type"] == "cuda" else \
        f"{dev['name']}, {dev.get('torch_threads')} threads"
    kind = "quick run (tiny sizes, few repetitions)" if rep.get("quick") \
        else "benchmark"
    return [f"ddm_fast {kind} on {where} ({dev['type']})",
            "median milliseconds per call (per sampler step for the "
            "k-diffusion / diffusers rows); 'best ddm_fast vs baseline' is the "
            "speed-up of the fastest ddm_fast backend over the eager (or "
            "peer) baseline"]


def build_parser() -> argparse.ArgumentParser:
    from .workloads import WORKLOADS
    from .cases import CASES
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=DESCRIPTION,
                                epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument("--workload", default="",
                   help="comma-separated workloads, 'all' or 'default' (default: this "
                        f"device's defaults; --list shows them). One of: {', '.join(WORKLOADS)}")
    p.add_argument("--cases", default="",
                   help=f"comma-separated subset of: {', '.join(CASES)}")
    p.add_argument("--dtypes", default=None,
                   help="comma-separated dtypes (default: float32 on CPU, "
                        "float32,bfloat16 on CUDA)")
    p.add_argument("--backends", default="",
                   help="comma-separated ddm_fast backends to run (default: every "
                        "available one of the device, e.g. reference,cpu)")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the torch.compile baseline")
    p.add_argument("--no-peers", action="store_true",
                   help="skip the k-diffusion / diffusers cases")
    p.add_argument("--quick", action="store_true",
                   help="tiny workloads, few repetitions, small roofline copy (CI smoke run)")
    p.add_argument("--budget", type=float, default=2.0,
                   help="CPU: seconds of timed calls per case before stopping (after at "
                        "least 5 interleaved rounds; default 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's default; 1 with --quick)")
    p.add_argument("--json", default=None, help="write the report (JSON) here")
    p.add_argument("--markdown", default=None, help="write the markdown table here")
    p.add_argument("--plot", default=None, help="write the roofline plot (PNG) here")
    p.add_argument("--save", nargs="?", const=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results"), default=None,
        metavar="DIR", help="write <DIR>/<device>-<date>.{json,md,png} "
                            "(default DIR: benchmarks/results)")
    p.add_argument("--list", action="store_true", help="list workloads and cases, then exit")
    return p


def _list() -> None:
    from .cases import CASES, GROUPS, TRAFFIC
    from .workloads import DEFAULTS, QUICK, WORKLOADS
    print("workloads:")
    for w in WORKLOADS.values():
        tags = [d for d in ("cpu", "cuda") if w.name in DEFAULTS[d]]
        tags += ["quick"] if w.name in QUICK else []
        mask = "no mask" if w.land_fraction is None else \
            f"{100 * w.land_fraction:.1f} % land, {w.mask_layout}"
        print(f"  {w.name:17s} {' x '.join(map(str, w.shape)):22s} {mask:28s} "
              f"[{', '.join(w.devices)}]{' default: ' + ', '.join(tags) if tags else ''}")
        print(f"  {'':17s} {w.user}")
    print("cases (necessary traffic in passes over one tensor):")
    for c in CASES:
        t = TRAFFIC[c]
        what = "time and peak memory only (a network runs)" if t is None else \
            f"{t[0]} reads + {t[1]} writes: {t[2]}"
        print(f"  {c:20s} [{GROUPS[c]}] {what}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        _list()
        return 0
    import torch
    from . import report as report_mod
    from .suite import run_suite, write_json

    # --quick is a smoke run, often on a shared CI machine: one thread
    # (oversubscribed threads on a loaded machine slow small ops 10x)
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    try:
        rep = run_suite(
            args.device, workload=args.workload,
            dtypes=tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
            if args.dtypes else None,
            compile_baseline=not args.no_compile, quick=args.quick,
            with_peers=not args.no_peers,
            case_names=[c.strip() for c in args.cases.split(",") if c.strip()] or None,
            budget_s=args.budget,
            only_backends=[b.strip() for b in args.backends.split(",") if b.strip()] or None,
            command=" ".join(["python -m benchmarks"] + argv_list))
    except ValueError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 2

    paths = {"json": args.json, "markdown": args.markdown, "plot": args.plot}
    if args.save:
        stamp = datetime.date.today().strftime("%Y%m%d")
        base = os.path.join(args.save, f"{rep['device']['type']}-"
                            f"{_slug(rep['device']['name'])}-{stamp}"
                            + ("-quick" if args.quick else ""))
        paths = {"json": paths["json"] or base + ".json",
                 "markdown": paths["markdown"] or base + ".md",
                 "plot": paths["plot"] or base + ".png"}
    print()
    print("\n".join(table_heading(rep)))
    print()
    print("\n".join(report_mod.compact_table(rep)))
    print()
    if paths["json"]:
        write_json(rep, paths["json"])
        print(f"wrote {paths['json']}")
    if paths["markdown"]:
        os.makedirs(os.path.dirname(os.path.abspath(paths["markdown"])), exist_ok=True)
        with open(paths["markdown"], "w", encoding="utf-8") as fh:
            fh.write(report_mod.markdown(rep))
        print(f"wrote {paths['markdown']}")
    if paths["plot"]:
        if report_mod.plot(rep, paths["plot"]):
            print(f"wrote {paths['plot']}")
        else:
            print("no plot: matplotlib is not installed")
    if args.save:
        print(f"README block: python -m benchmarks.readme {paths['json']}")
    if rep["failures"]:
        print(f"{len(rep['failures'])} implementation(s) failed; see 'failures' "
              "in the report", file=sys.stderr)
    bad = [r for r in rep["results"] if r.get("check") and not r["check"]["ok"]]
    if bad:
        print(f"{len(bad)} output check(s) differ from their baseline", file=sys.stderr)
    return 1 if rep["failures"] or bad else 0


if __name__ == "__main__":
    sys.exit(main())
