"""Where a training step's time goes: MindSpore's profiler over the eve-ms step, summed per op type and per kind.

    python tools/benchmarks/profile_step.py [--preset small] [--stage 3] [--steps 2] [--out DIR] [--top 25]

Runs the step (graph mode) twice untimed, then `--steps` steps under `mindspore.profiler.Profiler`,
and prints, per step: the time of each kind of work (GEMMs forward / backward, attention batched
products, convolutions, optimizer, gradient buffers, everything else), the op types, and the
single most expensive ops. Op times are the CPU kernels' own; the step's wall time is printed
beside them, the difference being framework and host work between kernels. Before profiling, the
trainer's three graphs (forward+backward, gradient reduction, AdamW update) are timed one by one
against the whole `train_step`, the rest being the trainer's host work.
"""
from __future__ import annotations

import argparse
import collections
import csv
import glob
import os
import sys
import tempfile
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1]
for _path in (str(TOOLS.parent), str(TOOLS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ.setdefault("GLOG_v", "3")


def kind(op_type: str, name: str) -> str:
    """A coarse label for one profiled op."""
    if "optimizer" in name:
        return "optimizer (AdamW update)"
    if op_type in ("MatMul", "BatchMatMul"):
        if "_MatMulExt" in name or op_type == "BatchMatMul":
            return "attention batched products"
        return "GEMM backward" if name.startswith("Gradients") else "GEMM forward"
    if op_type.startswith("Conv2D") or op_type.startswith("DepthwiseConv"):
        return "convolution"
    outside_network = not name.startswith(("Gradients", "Default/network"))
    if op_type in ("AssignAdd", "Assign", "Square", "ReduceSum") and outside_network:
        return "gradient buffers (accumulate, norm, clear)"
    return "other (elementwise, norms, softmax, loss, gathers)"


def summarize(detail_csv: str, steps: int, top: int) -> str:
    rows = list(csv.DictReader(open(detail_csv, encoding="utf-8")))
    by_kind, by_type = collections.Counter(), collections.Counter()
    for r in rows:
        ms = float(r["op_total_time(ms)"]) / steps
        by_kind[kind(r["op_type"], r["full_op_name"])] += ms
        by_type[r["op_type"]] += ms
    total = sum(by_kind.values())
    lines = [f"kernel time per step: {total:.1f} ms"]
    lines += [f"  {ms:9.1f} ms  {ms / total:6.1%}  {name}" for name, ms in by_kind.most_common()]
    lines.append("op types:")
    lines += [f"  {ms:9.1f} ms  {ms / total:6.1%}  {name}" for name, ms in by_type.most_common(top)]
    lines.append("most expensive ops:")
    rows.sort(key=lambda r: -float(r["op_total_time(ms)"]))
    lines += [f"  {float(r['op_total_time(ms)']) / steps:9.1f} ms  {r['full_op_name']}" for r in rows[:top]]
    return "\n".join(lines)


def graph_split(step, repeats: int = 5) -> str:
    """Median ms of the whole train_step and of each of the trainer's graphs called on their own."""
    import mindspore as ms
    import numpy as np

    trainer = step.trainer
    inputs = [ms.Tensor(np.asarray(step.batch[k])) for k in ("input_ids", "attention_mask", "labels", "pixel_values")]
    one = ms.Tensor(1.0, ms.float32)

    def micro():
        for out in trainer._micro(*inputs, one, one, one):
            out.asnumpy()

    parts = {"train_step": lambda: step("graph"), "forward+backward graph": micro,
             "gradient reduction graph": lambda: trainer._reduce(one).asnumpy(),
             "AdamW update graph": lambda: trainer._apply(ms.Tensor(0.0, ms.float32)).asnumpy()}
    times = {name: [] for name in parts}
    for _ in range(repeats):
        for name, run in parts.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    ms_ = {name: 1e3 * float(np.median(v)) for name, v in times.items()}
    rest = ms_["train_step"] - sum(v for k, v in ms_.items() if k != "train_step")
    lines = [f"  {v:9.1f} ms  {name}" for name, v in ms_.items()]
    return "\n".join(lines + [f"  {rest:9.1f} ms  trainer host work (step minus its graphs)"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--stage", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", help="profiler output folder (default: a temporary one)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)

    from eve_ms.mindformers_env import import_mindformers

    import_mindformers()
    from mindspore.profiler import Profiler

    from benchmarks.ms_steps import stage_step
    from eve_ms.runtime import setup_context

    setup_context("CPU", mode="graph")
    step = stage_step(args.preset, args.stage)
    for _ in range(2):
        step("graph")
    split = graph_split(step) if hasattr(step.trainer, "_micro") else "  (trainer graphs not found)"
    out = args.out or tempfile.mkdtemp(prefix="eve_profile_")
    profiler = Profiler(output_path=out)
    start = time.perf_counter()
    for _ in range(args.steps):
        step("graph")
    wall = (time.perf_counter() - start) / args.steps
    profiler.analyse()
    found = glob.glob(os.path.join(out, "**", "cpu_op_detail_info_*.csv"), recursive=True)
    if not found:
        print(f"no CPU op table under {out}", file=sys.stderr)
        return 1
    print(f"{args.preset} preset, stage {args.stage}, graph mode")
    print(f"the trainer's graphs, timed alone:\n{split}")
    print(f"step wall time {1e3 * wall:.1f} ms (profiled)")
    print(summarize(found[0], args.steps, args.top))
    print(f"profiler output: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
