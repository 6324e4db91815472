"""tools/bench.py: a quick run of its cheapest suites writes a table and JSON with positive, finite numbers.

No timing is asserted here: performance targets are reported by the benchmark, never tested.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPECTED = {
    "evf": {"dense_ffn_fwd_bwd_ms", "evf_layer_fwd_bwd_ms", "evf_over_dense", "allocation_share_of_evf_layer"},
    "allocation": {"latency_ms[T=1024,cpu]", "latency_ms[T=1024,composed]", "latency_ms[T=16384,numpy]",
                   "kernel_speedup_vs_composed[T=16384]", "allocation_share_of_evf_forward[T=256]"},
}


def test_quick_bench_reports_every_metric_as_a_positive_finite_number(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, GLOG_v="3", LOG_MF_PATH=str(tmp_path / "mindformers_log"))
    done = subprocess.run([sys.executable, str(REPO / "tools" / "bench.py"), "--quick", "--suite", "evf", "allocation",
                           "--json", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["size"] == "quick" and results["environment"]["threads"] >= 1
    assert set(results["suites"]) == set(EXPECTED)
    for suite, names in EXPECTED.items():
        entry = results["suites"][suite]
        assert entry["error"] is None
        assert names <= set(entry["metrics"]), sorted(entry["metrics"])
        for name, metric in entry["metrics"].items():
            assert math.isfinite(metric["value"]) and metric["value"] > 0, (suite, name, metric)
            assert metric["met"] in (None, True, False) and (metric["met"] is None) == (metric["target"] is None)
    table = done.stdout
    assert "evf_over_dense" in table and "kernel_speedup_vs_composed[T=16384]" in table and "targets met" in table
    assert not (tmp_path / "output").exists()  # MindFormers' logs stay out of the working directory
