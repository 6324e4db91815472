"""Latency of the token allocation per backend, measured side by side (for tools/bench.py).

`bench_allocation()` times, for each T, the C++ kernel and the composed MindSpore ops (both
behind `TokenAllocator`, in the given execution mode), the numpy reference, and the bare
C++ computation called through ctypes (no framework overhead). Backends take turns inside
every repeat, so a busy machine slows them alike; warm-up calls (graph compilation
included) are excluded; the median of the repeats is reported.

    python tools/benchmarks/allocation_latency.py [--sizes 1024 4096] [--mode graph]
"""
from __future__ import annotations

import ctypes
import statistics
import time

import numpy as np

from eve_ms.ops.token_allocation import STRATEGY_CODES, allocate_reference, compute_capacity

BACKENDS = ("cpu", "composed", "numpy", "cpu-raw")


def _inputs(num_tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    p_vision = rng.random(num_tokens).astype(np.float32)
    probs = np.ascontiguousarray(np.stack([1 - p_vision, p_vision], axis=1).astype(np.float32))
    return probs, rng.random(num_tokens) < 0.6, rng.random(num_tokens) < 0.95, rng.random(num_tokens).astype(np.float32)


def _mindspore_runner(backend, num_tokens, strategy, capacity_factor, min_capacity, inputs):
    import mindspore as ms

    from eve_ms.ops.allocator import TokenAllocator

    net = TokenAllocator(num_tokens, strategy, capacity_factor, min_capacity, backend=backend)
    tensors = [ms.Tensor(x) for x in inputs]

    def run():
        for out in net(*tensors):
            out.asnumpy()  # wait for the result

    return run


def _raw_runner(num_tokens, strategy, capacity, inputs):
    from eve_ms.ops.kernels.build import build_kernel

    lib = ctypes.CDLL(str(build_kernel("cpu")))
    # `arrays` stays referenced by `run`: the pointers below do not keep the buffers alive.
    arrays = [np.ascontiguousarray(x) for x in inputs]
    arrays += [np.empty(num_tokens, np.int32), np.empty(num_tokens, np.int32), np.empty(4, np.int32)]
    probs, is_image, valid, noise, expert, slot, counts = (ctypes.c_void_p(a.ctypes.data) for a in arrays)
    args = (ctypes.c_int64(num_tokens), probs, is_image, valid, noise, ctypes.c_int64(capacity),
            ctypes.c_int64(STRATEGY_CODES[strategy]), ctypes.c_float(1.0), ctypes.c_float(0.5), expert, slot, counts)

    def run():
        if lib.EveAllocateRaw(*args) != 0:
            raise RuntimeError(f"EveAllocateRaw failed on {len(arrays[0])} tokens")

    return run


def bench_allocation(sizes=(1024, 4096, 16384, 65536), strategy: str = "img_gbpr", repeats: int = 15,
                     warmup: int = 2, mode: str = "graph", backends=BACKENDS, capacity_factor: float = 1.5,
                     min_capacity: int = 4) -> list[dict]:
    """Median latency (ms) per (T, backend); rows also carry `speedup_vs_composed` where both ran.

    Sets MindSpore to CPU in `mode` ("graph" | "pynative").
    """
    from eve_ms.runtime import setup_context

    setup_context("CPU", mode=mode)
    rows = []
    for num_tokens in sizes:
        inputs = _inputs(num_tokens)
        capacity = compute_capacity(num_tokens, capacity_factor, min_capacity)
        runners = {}
        for backend in backends:
            if backend in ("cpu", "composed"):
                runners[backend] = _mindspore_runner(backend, num_tokens, strategy, capacity_factor, min_capacity,
                                                     inputs)
            elif backend == "numpy":
                runners[backend] = lambda: allocate_reference(*inputs, strategy=strategy,  # noqa: E731
                                                              capacity_factor=capacity_factor,
                                                              min_capacity=min_capacity)
            elif backend == "cpu-raw":
                runners[backend] = _raw_runner(num_tokens, strategy, capacity, inputs)
            else:
                raise ValueError(f"unknown backend {backend!r}; expected some of {BACKENDS}")
        for run in runners.values():
            for _ in range(warmup):
                run()
        times = {backend: [] for backend in runners}
        for _ in range(repeats):
            for backend, run in runners.items():
                start = time.perf_counter()
                run()
                times[backend].append(time.perf_counter() - start)
        medians = {backend: 1e3 * statistics.median(t) for backend, t in times.items()}
        for backend, median in medians.items():
            row = {"num_tokens": num_tokens, "backend": backend, "strategy": strategy, "mode": mode,
                   "median_ms": median, "min_ms": 1e3 * min(times[backend]), "repeats": repeats}
            if "composed" in medians and backend != "composed":
                row["speedup_vs_composed"] = medians["composed"] / median
            rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'T':>6}  {'backend':<9} {'median ms':>10} {'min ms':>9} {'x composed':>10}"]
    for r in rows:
        speedup = f"{r['speedup_vs_composed']:.1f}" if "speedup_vs_composed" in r else "-"
        lines.append(f"{r['num_tokens']:>6}  {r['backend']:<9} {r['median_ms']:>10.3f} {r['min_ms']:>9.3f} "
                     f"{speedup:>10}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Token allocation latency per backend (CPU).")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--strategy", default="img_gbpr", choices=sorted(STRATEGY_CODES))
    parser.add_argument("--mode", default="graph", choices=("graph", "pynative"))
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    rows = bench_allocation(args.sizes, args.strategy, args.repeats, mode=args.mode)
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
