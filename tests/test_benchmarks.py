"""The benchmark suite runs and reports what the README's table needs
(no timing is asserted: speed is shown by the suite, not by tests)."""
import json

from benchmarks.suite import run_suite, write_json


def test_quick_suite_reports_every_case(tmp_path):
    report = run_suite("cpu", dtypes=("float32",), compile_baseline=False, quick=True)
    cases = {r["case"] for r in report["results"]}
    assert cases == {"randn", "diffuse", "train_step_ops", "sampler_step",
                     "masked_mean"}
    impls = {r["impl"] for r in report["results"]}
    assert "eager" in impls and "ddm_fast[reference]" in impls
    assert report["copy_bandwidth_gbps"] > 0
    for r in report["results"]:
        assert r["ms"] > 0 and r["gbps"] > 0
    path = tmp_path / "bench.json"
    write_json(report, str(path))
    assert json.loads(path.read_text())["device_type"] == "cpu"
