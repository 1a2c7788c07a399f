"""The benchmark command line a newcomer meets: ``python -m benchmarks``
is installed with the package (so it runs from any directory) and its
results table has a heading saying what the numbers are."""
import os
import runpy

import pytest
import setuptools

from benchmarks import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_setup_installs_the_benchmarks_package(monkeypatch):
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch.chdir(ROOT)
    runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="__main__")
    assert "benchmarks" in captured["packages"]
    assert "ddm_fast" in captured["packages"]


def _fake_report():
    row = {"workload": "lorenz96", "dtype": "float32", "case": "diffuse",
           "ms": {"p50": 0.5}, "peak_bytes": 1024, "check": {"ok": True}}
    return {
        "device": {"type": "cpu", "name": "Test CPU", "torch_threads": 2},
        "quick": True, "failures": [],
        "results": [
            {**row, "impl": "eager", "speedup_vs_baseline": None, "baseline": None},
            {**row, "impl": "ddm_fast[cpu]", "ms": {"p50": 0.25},
             "speedup_vs_baseline": 2.0, "baseline": "eager"}],
    }


def test_printed_table_has_a_heading(monkeypatch, capsys):
    import benchmarks.suite
    monkeypatch.setattr(benchmarks.suite, "run_suite",
                        lambda *args, **kwargs: _fake_report())
    assert cli.main(["--quick", "--no-compile", "--no-peers"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    table = next(i for i, line in enumerate(lines) if line.startswith("| workload"))
    heading = "\n".join(lines[:table])
    assert "on Test CPU, 2 threads (cpu)" in heading
    assert "median milliseconds per call" in heading
    assert "×2.00 vs eager" in lines[table + 2]


@pytest.mark.parametrize("quick, device, expected", [
    (False, {"type": "cuda", "name": "NVIDIA H100"}, "ddm_fast benchmark on NVIDIA H100 (cuda)"),
    (True, {"type": "cpu", "name": "AMD EPYC", "torch_threads": 1},
     "ddm_fast quick run (tiny sizes, few repetitions) on AMD EPYC, 1 threads (cpu)"),
])
def test_heading_names_the_device(quick, device, expected):
    assert cli.table_heading({"device": device, "quick": quick})[0] == expected
