"""Where a decode step's time goes: host work, the graph call, and MindSpore's profiler per op type.

    python tools/benchmarks/profile_decode.py [--preset small] [--batch 4] [--prompt 64] [--new 32] [--top 20]
                                              [--path generator|functional]

Builds the preset's dense LLM (graph mode), prefills a random prompt of `--batch` x `--prompt`
tokens into a cache of prompt + new slots, then times decode steps: with `--path generator` (the
default) of `Generator`'s DecodeStep over a `KVCache` (what generation runs: the cache written in
place, the argmax in the graph, B ids read back), with `--path functional` of `LLMDecodeStep`
(caches handed in and returned, the path generation took before `eve_ms.models.kv_cache`; the
README's "before" profile). It times the whole host loop iteration, the graph call alone, and, under
`mindspore.profiler.Profiler`, the CPU kernels' own time summed per op type. The
difference between the graph call and its kernels is framework work (launch, input/output
handling); the difference between the loop and the call is host work.
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


def summarize(detail_csv: str, steps: int, top: int) -> str:
    rows = list(csv.DictReader(open(detail_csv, encoding="utf-8")))
    by_type, count = collections.Counter(), collections.Counter()
    for r in rows:
        by_type[r["op_type"]] += float(r["op_total_time(ms)"]) / steps
        count[r["op_type"]] += int(float(r.get("op_occurrences", 0) or 0)) / steps if "op_occurrences" in r else 0
    total = sum(by_type.values())
    lines = [f"kernel time per step: {total:.2f} ms over {len(rows)} ops"]
    lines += [f"  {ms:8.2f} ms  {ms / total:6.1%}  {name}" for name, ms in by_type.most_common(top)]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--no-profiler", action="store_true")
    parser.add_argument("--path", default="generator", choices=["generator", "functional"])
    args = parser.parse_args(argv)

    from eve_ms.mindformers_env import import_mindformers

    import_mindformers()
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor

    from benchmarks.common import PRESETS
    from eve_ms.config import LLMConfig
    from eve_ms.models.llm import LLM, LLMDecodeStep
    from eve_ms.runtime import setup_context

    setup_context("CPU", mode="graph")
    ms.set_seed(0)
    llm = LLM(LLMConfig(**PRESETS[args.preset]["llm"]))
    llm.set_train(False)
    b, s = args.batch, args.prompt
    total = s + args.new
    rng = np.random.default_rng(0)
    ids = rng.integers(4, llm.config.vocab_size, (b, s)).astype(np.int32)
    mask = np.zeros((b, total), np.int32)
    mask[:, :s] = 1
    state = {"t": 0}
    if args.path == "functional":
        step = LLMDecodeStep(llm)
        keys, values = llm.init_cache(b, total)
        logits, keys, values = step(Tensor(ids), Tensor(mask), Tensor(0, ms.int32), keys, values)
        token = logits.asnumpy()[:, -1].argmax(-1).astype(np.int32)
        state.update(keys=keys, values=values)

        def call_step(*inputs):
            out, state["keys"], state["values"] = step(*inputs, state["keys"], state["values"])
            return out

        def read(out):
            return out.asnumpy()[:, -1].argmax(-1).astype(np.int32)
    else:
        from eve_ms.inference.generate import Generator, LanguageModel

        generator = Generator(LanguageModel(llm))
        prefill, cache = generator._cell("prefill", None, b, total)
        decode, _ = generator._cell("decode", None, b, total)
        cache.reset()
        noise = Tensor(np.zeros((1, b, s), np.float32))
        token = prefill(Tensor(ids), Tensor(mask), noise)[0].asnumpy()

        def call_step(*inputs):
            return decode(*inputs, Tensor(np.zeros((1, b, 1), np.float32)))[0]

        def read(out):
            return out.asnumpy()

    def one_step():
        t = state["t"] % args.new
        mask[:, s + t] = 1
        out = call_step(Tensor(token[:, None]), Tensor(mask), Tensor(s + t, ms.int32))
        state["t"] += 1
        return read(out)

    for _ in range(3):
        one_step()
    loop = []
    for _ in range(args.steps):
        start = time.perf_counter()
        one_step()
        loop.append(time.perf_counter() - start)
    # the graph call alone, inputs made beforehand, one sync at the end of each call
    inputs = (Tensor(token[:, None]), Tensor(mask), Tensor(s, ms.int32))
    call = []
    for _ in range(args.steps):
        start = time.perf_counter()
        read(call_step(*inputs))
        call.append(time.perf_counter() - start)
    print(f"{args.preset} LLM, batch {b}, cache {total} slots, graph mode, {args.path} path; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"decode loop iteration {1e3 * np.median(loop):.2f} ms; graph call alone {1e3 * np.median(call):.2f} ms")
    if args.no_profiler:
        return 0
    from mindspore.profiler import Profiler

    out_dir = tempfile.mkdtemp(prefix="eve_profile_decode_")
    profiler = Profiler(output_path=out_dir)
    start = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    wall = (time.perf_counter() - start) / args.steps
    profiler.analyse()
    found = glob.glob(os.path.join(out_dir, "**", "cpu_op_detail_info_*.csv"), recursive=True)
    print(f"profiled step wall time {1e3 * wall:.2f} ms")
    if not found:
        print(f"no CPU op table under {out_dir}", file=sys.stderr)
        return 1
    print(summarize(found[0], args.steps, args.top))
    print(f"profiler output: {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
