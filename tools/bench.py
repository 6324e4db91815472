"""Performance benchmarks of eve-ms: one table of numbers, each performance target beside its measurement.

    python tools/bench.py [--suite NAME ...] [--quick] [--json OUT] [--threads N]

Suites (all by default, in this order; the code of each is in tools/benchmarks/):

| suite | what | targets |
|---|---|---|
| allocation | token allocation per backend at T = 1k..64k; its share of an EVF layer at H=2048 | kernel >= 5x composed at 16k; share < 5% |
| evf | EVF layer forward+backward over the dense FFN, T=4096, H=512, C=1.5 | <= 1.6x (padded bound 1.5x) |
| train | training-step tokens/s of stages 1-3, tiny and small presets, graph / PyNative / PyTorch; compile time; EVF overhead; peak memory of stages 2 and 3 | eve-ms >= 0.5x PyTorch; stage-3 memory <= 1.15x stage 2 |
| floor | stage-3 step over the same GEMMs and attention alone; raw 1024x256x688 GEMM | <= 1.25x |
| inference | language-only stage-3 forward over dense; KV-cache generation beside transformers' generate and the decode floor; eve-ms eval questions/s | within 2%; decode >= 0.5x transformers, <= 2x floor; prefill >= 0.5x |
| data | LlavaLoader samples/s beside the training step's | loader faster than the step |
| plan | `eve-ms plan`'s memory of stage-2/3 steps (tiny, small) over what they hold (MindSpore's CPU memory pool + weights and AdamW moments); its FLOPs over an independent count | memory 0.8-1.25x; FLOPs 0.95-1.05x |

Default sizes finish in about ten minutes on a 2-core CPU; `--quick` is a one-to-two-minute smoke
run (smaller sizes and repeats: its numbers are not the reported ones). Compared things are timed
side by side in one process (turns within every repeat); the median is reported. MindSpore runs on
CPU with `eve_ms.runtime.setup_context` (its thread setting: runtime_num_threads); PyTorch runs with
the same thread count and with one thread, and comparisons use the faster (on a shared machine its
OpenMP threads can lose 10x). Timings depend on the machine's load: the JSON records the load
average before and after. `tools/benchmarks/profile_step.py` shows where a step's time goes.
Exit status 1 when a suite fails to run (targets not met do not fail the run).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
for _path in (str(TOOLS.parent), str(TOOLS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ.setdefault("GLOG_v", "3")

SUITES = ("allocation", "evf", "train", "floor", "inference", "data", "plan")


def _parse_args(argv):
    parser = argparse.ArgumentParser(description="eve-ms performance benchmarks (CPU).")
    parser.add_argument("--suite", nargs="+", choices=SUITES, help="suites to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats: a smoke run")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for MindSpore and PyTorch (default: eve_ms.runtime's, min(cores, 8))")
    return parser.parse_args(argv)


def _environment(threads: int) -> dict:
    import mindspore

    env = {"python": platform.python_version(), "mindspore": mindspore.__version__, "cpu_count": os.cpu_count(),
           "threads": threads, "machine": platform.machine(), "load_average_start": os.getloadavg()}
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:
        env["torch"] = None
    return env


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01:
        return f"{value:.3f}"
    return f"{value:.2e}"


def format_table(metrics) -> str:
    header = ("suite", "metric", "value", "unit", "target", "met", "note")
    body = []
    for m in metrics:
        met = "" if m.met is None else ("yes" if m.met else "NO")
        body.append((m.suite, m.name, _fmt(m.value), m.unit, m.target, met, m.note))
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *body]:
        cells = [str(c).rjust(w) if i == 2 else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells + [str(row[-1])]).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths) + "  ----")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parse_args(argv)
    from eve_ms.mindformers_env import import_mindformers

    import_mindformers()  # before any module imports it: keeps its logs out of the working directory
    from benchmarks.common import Report
    from eve_ms.runtime import setup_context

    setup_context("CPU", mode="graph", num_threads=args.threads)
    import mindspore as ms

    threads = ms.get_context("runtime_num_threads")
    try:
        from benchmarks.common import set_threads

        set_threads(threads)
    except ImportError:
        pass
    size = "quick" if args.quick else "default"
    results = {"size": size, "environment": _environment(threads), "suites": {}}
    all_metrics, failed = [], []
    for suite in args.suite or SUITES:
        report = Report(suite)
        module = importlib.import_module(f"benchmarks.{suite}_suite")
        print(f"[bench] {suite} ({size}) ...", file=sys.stderr, flush=True)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        error = None
        try:
            if suite == "train":
                module.run(size, report, threads)
            else:
                module.run(size, report)
        except Exception:  # a failing suite is reported, the others still run
            error = traceback.format_exc()
            failed.append(suite)
            print(f"[bench] {suite} failed:\n{error}", file=sys.stderr, flush=True)
        seconds = time.perf_counter() - started
        load = (load_before, os.getloadavg()[0])
        print(f"[bench] {suite} done in {seconds:.0f} s (load average {load[0]:.2f} -> {load[1]:.2f})",
              file=sys.stderr, flush=True)
        all_metrics += report.metrics
        results["suites"][suite] = {"seconds": seconds, "error": error, "load_average": load,
                                    "metrics": {m.name: m.as_dict() for m in report.metrics}}
    results["environment"]["load_average_end"] = os.getloadavg()
    print(format_table(all_metrics))
    targets = [m for m in all_metrics if m.met is not None]
    print(f"\n{sum(m.met for m in targets)} of {len(targets)} targets met; load average "
          f"{results['environment']['load_average_start'][0]:.2f} at start, "
          f"{results['environment']['load_average_end'][0]:.2f} at end; {threads} threads")
    if failed:
        print(f"suites that failed to run: {', '.join(failed)}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
