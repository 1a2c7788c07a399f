"""Rendering a report: the full markdown table, README's compact block and
the roofline plot. Everything here reads the JSON report only, so a
committed result renders the same anywhere."""
from __future__ import annotations

import os
from typing import Dict, List, Optional

IMPL_ORDER = ["eager", "compiled", "k-diffusion", "diffusers"]


def _impl_key(name: str):
    if name in IMPL_ORDER:
        return (0, IMPL_ORDER.index(name), name)
    return (1, 0, name)


def _fmt_ms(ms: float) -> str:
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3g}"


def _size(nbytes: Optional[int]) -> str:
    if nbytes is None:
        return "–"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} B"


def summary_lines(report: Dict) -> List[str]:
    dev = report["device"]
    git = report.get("git") or {}
    rev = (git.get("revision") or "unknown")[:10] + (" (dirty)" if git.get("dirty") else "")
    v = report["versions"]
    roof = report["roofline"]
    where = dev["name"] if dev["type"] == "cuda" else \
        f"{dev['name']}, {dev.get('torch_threads')} threads"
    return [
        f"Device: **{where}** ({dev['type']}); {report['created']}; git `{rev}`; "
        f"torch {v['torch']}, ddm_fast {v['ddm_fast']}"
        + (f", triton {v['triton']}" if dev["type"] == "cuda" and v.get("triton") else "")
        + (" — **quick run (tiny sizes, few repetitions)**" if report.get("quick") else "")
        + ".",
        f"Copy roofline: **{roof['gbps']:.1f} GB/s** ({roof['method']}). "
        f"Timer: {report['method']['timer']}. Peak memory: "
        f"{report['method']['peak_memory']}.",
    ]


def markdown(report: Dict) -> str:
    """Every result as one table (with header), then skips and failures."""
    lines = [f"# ddm_fast benchmarks: {report['device']['name']}", ""]
    lines += summary_lines(report) + [""]
    lines.append("Times are per call (per sampler step for the peer cases): "
                 "median and 20th–80th percentiles. GB/s counts the bytes each "
                 "case must move (benchmarks/cases.py, TRAFFIC).")
    lines.append("")
    lines.append("| workload | dtype | case | implementation | p50 ms | p20–p80 ms "
                 "| GB/s | % of copy | vs baseline | peak memory | output check |")
    lines.append("|---|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in report["results"]:
        ms = r["ms"]
        gb = "–" if r["gbps"] is None else f"{r['gbps']:.2f}"
        frac = "–" if r["roofline_fraction"] is None else f"{100 * r['roofline_fraction']:.1f}"
        sp = "–" if r["speedup_vs_baseline"] is None else \
            ("baseline" if r["impl"] == r["baseline"] else f"×{r['speedup_vs_baseline']:.2f}")
        chk = "–"
        if r.get("check"):
            c = r["check"]
            chk = ("ok" if c["ok"] else "**differs**") + f" ({c['max_rel_err']:.1e})"
        lines.append(f"| {r['workload']} | {r['dtype']} | {r['case']} | {r['impl']} "
                     f"| {_fmt_ms(ms['p50'])} | {_fmt_ms(ms['p20'])}–{_fmt_ms(ms['p80'])} "
                     f"| {gb} | {frac} | {sp} | {_size(r['peak_bytes'])} | {chk} |")
    if report.get("skipped"):
        lines += ["", "Skipped:", ""]
        seen = set()
        for s in report["skipped"]:
            key = (s["case"], s["reason"])
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"- {s['case']}: {s['reason']}")
    if report.get("failures"):
        lines += ["", "Failures:", ""]
        for f in report["failures"]:
            lines.append(f"- {f['workload']} {f['dtype']} {f['case']} {f['impl']}: "
                         f"{f['error']}")
    return "\n".join(lines) + "\n"


def compact_table(report: Dict) -> List[str]:
    """One row per (workload, dtype, case), one column per implementation
    (median ms), and the best ddm_fast speed-up over the baseline."""
    results = report["results"]
    impls = sorted({r["impl"] for r in results}, key=_impl_key)
    multi_dtype = len({r["dtype"] for r in results}) > 1
    rows: Dict = {}
    for r in results:
        rows.setdefault((r["workload"], r["dtype"], r["case"]), {})[r["impl"]] = r
    head = ["workload"] + (["dtype"] if multi_dtype else []) + ["case"] + \
        [f"{i} ms" for i in impls] + ["best ddm_fast vs baseline", "peak memory: baseline → ddm_fast"]
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] * (len(head) - len(impls) - 2)
                          + ["---:"] * (len(impls) + 2)) + "|"]
    for (wl, dt, case), by_impl in rows.items():
        cells = [wl] + ([dt] if multi_dtype else []) + [case]
        for i in impls:
            cells.append(_fmt_ms(by_impl[i]["ms"]["p50"]) if i in by_impl else "–")
        fused = [r for n, r in by_impl.items() if n.startswith("ddm_fast[")]
        best = min(fused, key=lambda r: r["ms"]["p50"]) if fused else None
        if best is not None and best["speedup_vs_baseline"] is not None:
            cells.append(f"×{best['speedup_vs_baseline']:.2f} vs {best['baseline']}")
        else:
            cells.append("–")
        base = by_impl.get(best["baseline"]) if best else None
        cells.append(f"{_size(base['peak_bytes'] if base else None)} → "
                     f"{_size(best['peak_bytes'] if best else None)}")
        out.append("| " + " | ".join(cells) + " |")
    return out


def readme_block(report: Dict, source: str) -> str:
    """README's rendering of one result (``source``: its path)."""
    kind = "GPU" if report["device"]["type"] == "cuda" else "CPU"
    lines = [f"**{kind}** (`{source}`)", ""]
    lines += summary_lines(report) + [""]
    lines.append("Median time per call (per step for the k-diffusion / diffusers "
                 "rows, which run each library's sampler on the same inputs with a "
                 "trivial denoiser). The full table with percentiles, GB/s and "
                 f"output checks is `{os.path.splitext(source)[0]}.md`.")
    lines.append("")
    lines += compact_table(report)
    skipped = sorted({s["reason"] for s in report.get("skipped", [])
                      if s["reason"] != "--no-peers"})
    if skipped:
        lines += [""] + [f"Skipped: {s}" for s in skipped]
    return "\n".join(lines)


# ----------------------------------------------------------------- plot
MARKERS = "osD^v<>PX*hp"


def plot(report: Dict, path: str) -> Optional[str]:
    """Achieved GB/s per case against the copy roofline, one marker per
    implementation, one panel per workload. Returns the path, or None
    when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in report["results"] if r["gbps"] is not None]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    impls = sorted({r["impl"] for r in rows}, key=_impl_key)
    roof = report["roofline"]["gbps"]
    n = max(1, len(workloads))
    fig, axes = plt.subplots(n, 1, figsize=(12, 3.3 * n + 0.9), squeeze=False)
    multi_dtype = len({r["dtype"] for r in rows}) > 1
    spread = 0.5 / max(len(impls), 1)
    for ax, wl in zip(axes[:, 0], workloads or ["(no memory-bound results)"]):
        mine = [r for r in rows if r["workload"] == wl]
        labels = list(dict.fromkeys(
            r["case"] + (f"\n{r['dtype']}" if multi_dtype else "") for r in mine))
        for k, impl in enumerate(impls):
            xs, ys = [], []
            for r in mine:
                if r["impl"] != impl:
                    continue
                label = r["case"] + (f"\n{r['dtype']}" if multi_dtype else "")
                xs.append(labels.index(label) + (k - (len(impls) - 1) / 2) * spread)
                ys.append(r["gbps"])
            if xs:
                ax.scatter(xs, ys, marker=MARKERS[k % len(MARKERS)], s=40,
                           label=impl, zorder=3)
        ax.axhline(roof, color="k", linestyle="--", linewidth=1,
                   label=f"copy roofline {roof:.1f} GB/s")
        ax.set_yscale("log")
        values = [r["gbps"] for r in mine] or [roof]
        ax.set_ylim(min(values + [roof]) / 2, max(values + [roof]) * 2)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8, rotation=20, ha="right")
        ax.set_xlim(-0.6, max(len(labels) - 0.4, 0.6))
        ax.set_ylabel("GB/s (necessary bytes)", fontsize=8)
        ax.set_title(wl, fontsize=9, loc="left")
        ax.grid(axis="y", which="both", alpha=0.25)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(f"{report['device']['name']} ({report['device']['type']}): achieved "
                 "bandwidth per case vs measured copy bandwidth", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.80, 0.97))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
