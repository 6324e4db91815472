"""One training configuration in a fresh process: step times and resident memory, printed as one JSON line.

    python tools/benchmarks/step_probe.py --preset small --stage 3 [--mode graph|pynative]
                                          [--steps 3] [--pynative-sync]

Memory: `peak_step_rss` is the peak RSS while the timed steps run (the kernel's high-water mark
is reset after the first step, whose graph compilation is not part of a step's memory);
`peak_rss` is the whole process's peak (compilation included), `baseline_rss` the process after
imports and context set-up, before the model is built. `pool_built` / `pool_step` are the resident
bytes of MindSpore's CPU memory pool (`common.memory_pool_bytes`: every tensor MindSpore allocates) after
building and after the steps (its high-water mark); `state_bytes` the bytes of the weights and AdamW
moments the process holds, counted from the Parameter objects (on CPU they are host arrays in the heap,
outside the pool); `accum_bytes` the trainer's gradient buffers (inside the pool). `--pynative-sync` sets MindSpore's
`pynative_synchronize` before anything runs (it cannot be switched later in a process).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1]
for path in (str(TOOLS.parent), str(TOOLS)):
    if path not in sys.path:
        sys.path.insert(0, path)
os.environ.setdefault("GLOG_v", "3")


def _bytes(params) -> int:
    return sum(int(p.nbytes) for p in params)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--stage", type=int, required=True)
    parser.add_argument("--mode", default="graph", choices=("graph", "pynative"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="micro-batch (default: the preset's)")
    parser.add_argument("--pynative-sync", action="store_true")
    args = parser.parse_args(argv)

    from eve_ms.mindformers_env import import_mindformers

    import_mindformers()
    import mindspore as ms

    from benchmarks.common import memory_pool_bytes, peak_rss_bytes, reset_peak_rss, rss_bytes
    from benchmarks.ms_steps import stage_step
    from eve_ms.runtime import setup_context

    setup_context("CPU", mode=args.mode, num_threads=args.threads)
    if args.pynative_sync:
        ms.set_context(pynative_synchronize=True)
    baseline = rss_bytes()
    step = stage_step(args.preset, args.stage, batch_size=args.batch_size)
    built, pool_built = rss_bytes(), memory_pool_bytes()
    start = time.perf_counter()
    step(args.mode)
    first = time.perf_counter() - start
    peak_before = peak_rss_bytes()
    reset = reset_peak_rss()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step(args.mode)
        times.append(time.perf_counter() - start)
    result = {
        "preset": args.preset, "stage": args.stage, "mode": args.mode, "pynative_sync": args.pynative_sync,
        "first_step_s": first, "step_s": statistics.median(times), "tokens": step.tokens, "samples": step.samples,
        "baseline_rss": baseline, "built_rss": built, "peak_step_rss": peak_rss_bytes() if reset else None,
        "peak_rss": max(peak_before, peak_rss_bytes()), "trainable": sum(int(p.size) for p in step.trainer.params),
        "pool_built": pool_built, "pool_step": memory_pool_bytes(),
        "state_bytes": _bytes(step.trainer.network.get_parameters())
        + _bytes(step.trainer.optimizer.moments1) + _bytes(step.trainer.optimizer.moments2),
        "accum_bytes": _bytes(step.trainer.accum),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
