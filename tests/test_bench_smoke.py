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


POOL_PROBE = """
import os, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import mindspore as ms
from mindspore import ops
from benchmarks.common import memory_pool_bytes
ms.set_context(device_target="CPU")
before = memory_pool_bytes()
host = np.ones(32 * 2**20, np.float32)  # 128 MiB of numpy: malloc'ed, outside MindSpore's pool
after_numpy = memory_pool_bytes()
tensor = ops.ones((16 * 2**20,), ms.float32) + 1  # 64 MiB (twice, with the operand) from the pool
print(float(tensor[0].asnumpy()), host[0], before, after_numpy, memory_pool_bytes())
"""


def test_memory_pool_reading_counts_mindspore_tensors_and_not_numpy_arrays():
    """The plan suite's measured side: `memory_pool_bytes` sees MindSpore's allocations only."""
    env = dict(os.environ, GLOG_v="3")
    done = subprocess.run([sys.executable, "-c", POOL_PROBE, str(REPO / "tools")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    value, host, before, after_numpy, after = done.stdout.split()[-5:]
    assert float(value) == 2.0 and float(host) == 1.0
    assert int(before) == int(after_numpy) == 0
    assert 128 * 2**20 <= int(after) <= 136 * 2**20  # the ones and the sum, 64 MiB each, plus page rounding
