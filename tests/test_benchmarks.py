"""The benchmark suite runs end to end on tiny sizes and reports what the
README and the plots need. No timing is asserted: speed is shown by the
suite, not by tests; the outputs of the implementations are (the suite
compares deterministic cases against their baseline)."""
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from benchmarks import peers, timing, workloads
from benchmarks.cases import CASES, GROUPS, PEER_CASES, TRAFFIC, Context, necessary_bytes
from benchmarks.readme import BEGIN, END, newest_results, replace_block
from benchmarks.suite import SCHEMA, benchmarked_backends, run_suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OP_CASES = [c for c, g in GROUPS.items() if g != "peer"]


def _run(args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One --quick run of the CLI (no compile: Inductor's C++ builds take
    minutes on two cores), with every output format."""
    out = tmp_path_factory.mktemp("bench")
    paths = {k: str(out / f"quick.{k}") for k in ("json", "md", "png")}
    proc = _run(["-m", "benchmarks", "--quick", "--no-compile",
                 "--json", paths["json"], "--markdown", paths["md"],
                 "--plot", paths["png"]])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(paths["json"], encoding="utf-8") as fh:
        rep = json.load(fh)
    return rep, paths, proc.stdout


def test_quick_run_reports_every_case_and_implementation(quick):
    rep, _, stdout = quick
    assert rep["schema"] == SCHEMA and rep["quick"] is True
    assert rep["device"]["type"] == "cpu" and rep["device"]["name"]
    assert rep["versions"]["torch"] == torch.__version__
    assert "revision" in rep["git"]
    assert rep["roofline"]["gbps"] > 0
    assert rep["roofline"]["copy_bytes"] == 64 << 20  # --quick: smaller copy
    expected_impls = {"eager"} | {f"ddm_fast[{b}]"
                                  for b in benchmarked_backends(torch.device("cpu"))["benchmarked"]}
    assert "ddm_fast[reference]" in expected_impls
    assert "ddm_fast[triton]" not in expected_impls  # the interpreter is no benchmark
    cpu_cases = [c for c in OP_CASES if c != "sampling_loop"]  # GPU only
    for wl in workloads.QUICK:
        for case in cpu_cases:
            impls = {r["impl"] for r in rep["results"]
                     if r["workload"] == wl and r["case"] == case}
            assert impls == expected_impls, (wl, case, impls)
    for r in rep["results"]:
        assert 0 < r["ms"]["p20"] <= r["ms"]["p50"] <= r["ms"]["p80"]
        assert r["reps"] >= 3 and r["timer"].startswith("cpu")
        assert r["peak_bytes"] is None or r["peak_bytes"] >= 0
        if TRAFFIC[r["case"]] is None:
            assert r["bytes"] is None and r["gbps"] is None
        else:
            assert r["bytes"] > 0 and r["gbps"] > 0 and r["roofline_fraction"] > 0
        if r["impl"] == r["baseline"]:
            assert r["speedup_vs_baseline"] == pytest.approx(1.0)
        if r["check"] is not None:
            assert r["check"]["ok"], r
    assert any(r["peak_bytes"] for r in rep["results"])
    checked = {r["case"] for r in rep["results"] if r["check"] is not None}
    assert {"masked_mean", "heun_step"} <= checked
    assert rep["failures"] == []
    # peers: measured when installed, otherwise skipped with the reason
    for name, info in rep["peers"].items():
        assert info["available"] or info["reason"]
    for case in PEER_CASES:
        ran = any(r["case"] == case for r in rep["results"])
        said = any(s["case"] == case and s["reason"] for s in rep["skipped"])
        assert ran or said, case
    assert any(s["case"] == "sampling_loop" and "GPU" in s["reason"]
               for s in rep["skipped"])
    assert "copy roofline" in stdout and "| workload |" in stdout


def test_quick_run_writes_markdown_and_plot(quick):
    rep, paths, _ = quick
    text = open(paths["md"], encoding="utf-8").read()
    lines = text.splitlines()
    header = [i for i, l in enumerate(lines) if l.startswith("| workload | dtype | case |")]
    assert header and set(lines[header[0] + 1].replace("|", "")) <= set("-: ")
    assert sum(l.startswith("| quick_") for l in lines) == len(rep["results"])
    with open(paths["png"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_readme_block_is_generated_from_a_result(quick, tmp_path):
    _, paths, _ = quick
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Performance\n\nintro\n\n{BEGIN}\nSTALE-BLOCK\n{END}\n\n## Next\n",
                      encoding="utf-8")
    proc = _run(["-m", "benchmarks.readme", paths["json"], "--readme", str(readme)])
    assert proc.returncode == 0, proc.stderr
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# x\n\n## Performance\n\nintro\n\n" + BEGIN)
    assert text.endswith(END + "\n\n## Next\n") and "STALE-BLOCK" not in text
    assert "Generated by `python -m benchmarks.readme" in text
    assert "| workload | case | eager ms |" in text
    check = _run(["-m", "benchmarks.readme", paths["json"], "--readme", str(readme), "--check"])
    assert check.returncode == 0, check.stderr
    with pytest.raises(ValueError):
        replace_block("no markers here", "x")


def test_repository_readme_block_matches_committed_results():
    """README's performance block is what `python -m benchmarks.readme`
    renders from benchmarks/results/ (never edited by hand)."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    proc = _run(["-m", "benchmarks.readme", "--check"])
    assert proc.returncode == 0, proc.stderr + f" (newest results: {newest_results()})"


def test_runs_from_another_directory_and_refuses_gpu_only_workloads(tmp_path):
    # python path/to/benchmarks works from anywhere; a GPU-only workload on
    # the CPU is a clear error (exit 2) naming the CPU-sized variant
    proc = _run([os.path.join(ROOT, "benchmarks"), "--device", "cpu",
                 "--workload", "global_025"], cwd=str(tmp_path))
    assert proc.returncode == 2 and "global_1deg_cpu" in proc.stderr, proc.stderr
    with pytest.raises(ValueError, match="cuda only"):
        workloads.get("global_025", "cpu", quick=False)


def test_list(capsys):
    from benchmarks.cli import main
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "cpu_target" in out and "16 x 4 x 256 x 256" in out and "loss_fwd_bwd" in out


def test_traffic_table_and_workloads():
    assert set(TRAFFIC) == set(CASES) == set(GROUPS)
    target = workloads.WORKLOADS["cpu_target"]
    assert target.shape == (16, 4, 256, 256)
    mask = target.mask("cpu")
    assert mask.shape == (1, 1, 256, 256) and mask.dtype == torch.bool
    assert (~mask).sum().item() == round(0.30 * 256 * 256)
    ctx = Context(target, torch.float32, torch.device("cpu"), ["reference"], False)
    n = 16 * 4 * 256 * 256
    assert necessary_bytes("diffuse", ctx) == 2 * 4 * n + 256 * 256
    assert necessary_bytes("randn", ctx) == 4 * n
    assert necessary_bytes("train_step", ctx) is None
    arctic = workloads.WORKLOADS["pan_arctic"].mask("cpu")
    assert abs((~arctic).float().mean().item() - 0.515) < 1e-5
    glob = workloads.WORKLOADS["global_1deg_cpu"].mask("cpu")
    assert glob.shape == (1, 84, 181, 360) and glob[0, 1:].all() and not glob[0, 0].all()
    assert timing.percentiles([4.0, 1.0, 3.0, 2.0, 5.0]) == [1.8, 3.0, 4.2]


def test_unavailable_peer_is_reported_not_raised(monkeypatch):
    monkeypatch.setattr(peers, "_CACHE", {})

    def fail(name, *a, **k):
        raise ImportError(f"boom {name}")
    monkeypatch.setattr(peers.importlib, "import_module", fail)
    monkeypatch.setattr(peers, "_version", lambda dist: "9.9")
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: None)
    for peer in (peers.kdiffusion(), peers.diffusers()):
        assert peer.module is None and "boom" in peer.reason
        assert peer.describe()["available"] is False


def _fake_kdiffusion():
    """k-diffusion's three samplers as it writes them (eager PyTorch)."""
    def to_d(x, sigma, denoised):
        return (x - denoised) / sigma

    @torch.no_grad()
    def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * s_in)
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        return x

    @torch.no_grad()
    def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * s_in)
            d = to_d(x, sigmas[i], denoised)
            dt = sigmas[i + 1] - sigmas[i]
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in))
            x = x + (d + d_2) / 2 * dt
        return x

    @torch.no_grad()
    def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        old = None
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * s_in)
            t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = t_next - t
            if old is None:
                d = denoised
            else:
                r = (t - (-sigmas[i - 1].log())) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * d
            old = denoised
        return x

    return types.SimpleNamespace(sample_euler=sample_euler, sample_heun=sample_heun,
                                 sample_dpmpp_2m=sample_dpmpp_2m)


def test_peer_cases_run_on_the_same_inputs(monkeypatch):
    """With a k-diffusion present, its samplers and ddm_fast's run on the
    same inputs and agree (here a stand-in written as k-diffusion does)."""
    monkeypatch.setattr(peers, "_CACHE", {
        "k-diffusion": peers.Peer("k-diffusion", _fake_kdiffusion(), "test", "stand-in"),
        "diffusers": peers.Peer("diffusers", None, None, reason="not installed (test)")})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rep = run_suite("cpu", workload="quick_grid", compile_baseline=False,
                        quick=True, case_names=PEER_CASES, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    for case in ("kdiff_euler", "kdiff_heun", "kdiff_dpmpp_2m"):
        rows = [r for r in rep["results"] if r["case"] == case]
        assert {r["impl"] for r in rows} >= {"k-diffusion", "ddm_fast[reference]"}
        for r in rows:
            assert r["steps_per_call"] == 4 and r["baseline"] == "k-diffusion"
            if r["impl"] != "k-diffusion":
                assert r["check"]["ok"], r
    skipped = {s["case"] for s in rep["skipped"]}
    assert skipped == {"diffusers_euler", "diffusers_dpmsolver"}


def test_readme_takes_the_newest_gpu_and_cpu_results(tmp_path):
    def write(name, kind, created, quick=False):
        (tmp_path / name).write_text(json.dumps(
            {"schema": SCHEMA, "device": {"type": kind}, "created": created,
             "quick": quick}), encoding="utf-8")
    write("cpu-old.json", "cpu", "2026-01-01T00:00:00+00:00")
    write("cpu-new-quick.json", "cpu", "2026-02-01T00:00:00+00:00", quick=True)
    write("cpu-new.json", "cpu", "2026-01-15T00:00:00+00:00")
    write("cuda.json", "cuda", "2025-12-01T00:00:00+00:00")
    (tmp_path / "notes.json").write_text("[]", encoding="utf-8")
    assert [os.path.basename(p) for p in newest_results(str(tmp_path))] == \
        ["cuda.json", "cpu-new.json"]
    assert newest_results(str(tmp_path / "missing")) == []


def test_lorenz96_network_module_is_importable_by_name():
    """torch.compile of the training and Heun step cases looks the network's
    module up by name; loaded from a file path it must be registered."""
    import importlib
    from benchmarks import cases
    module = cases._l96_module()
    assert importlib.import_module(module.__name__) is module
    assert cases._l96_module() is module
