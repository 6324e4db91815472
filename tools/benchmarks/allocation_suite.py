"""Suite `allocation`: token-allocation latency per backend, and its share of an EVF layer at the paper's width.

Latency: `benchmarks.allocation_latency` (C++ kernel and composed MindSpore ops behind
`TokenAllocator` in graph mode, the numpy reference, the bare C++ call), img_gbpr, per T.
Share: the allocation as the EVF layer calls it (same backend, same T, graph mode) against the
EVF layer's forward at H = 2048, intermediate 6912 (PanGu-pi-1.5B), timed side by side.
"""
from __future__ import annotations

import numpy as np

from benchmarks.common import Report, interleaved_times, median, paired_ratio

SIZES = {
    "default": {"sizes": (1024, 4096, 16384, 65536), "repeats": 9, "share_tokens": 1024, "share_repeats": 3},
    "quick": {"sizes": (1024, 16384), "repeats": 3, "share_tokens": 256, "share_repeats": 2},
}
PAPER_HIDDEN, PAPER_INTERMEDIATE = 2048, 6912


def _evf_layer_inputs(num_tokens, hidden, seed=0):
    import mindspore as ms

    rng = np.random.default_rng(seed)
    return (ms.Tensor(rng.standard_normal((1, num_tokens, hidden)).astype(np.float32)),
            ms.Tensor(rng.random((1, num_tokens)) < 0.6), ms.Tensor(np.ones((1, num_tokens), bool)),
            ms.Tensor(rng.random((1, num_tokens)).astype(np.float32)))


def allocation_share(num_tokens: int, repeats: int, hidden: int = PAPER_HIDDEN,
                     intermediate: int = PAPER_INTERMEDIATE, kernel: str = "auto") -> dict:
    """Median seconds of the EVF layer forward and of its allocation alone (graph mode, side by side)."""
    import mindspore as ms

    from eve_ms.config import EVFConfig, LLMConfig
    from eve_ms.models.evf import EVFLayer
    from eve_ms.ops.allocator import TokenAllocator

    ms.set_context(mode=ms.GRAPH_MODE)
    config = LLMConfig(vocab_size=8, hidden_size=hidden, intermediate_size=intermediate, num_layers=1, num_heads=16)
    evf = EVFConfig(enabled=True, kernel=kernel)
    layer = EVFLayer(config, evf).set_train(True)  # the training capacity, as the allocator below uses
    allocator = TokenAllocator(num_tokens, evf.strategy, evf.capacity_factor, evf.min_capacity, evf.beta,
                               evf.redistribute_ratio, backend=layer.backend)
    x, is_image, valid, noise = _evf_layer_inputs(num_tokens, hidden)
    probs = layer.router.probabilities(x.reshape(num_tokens, hidden))
    flat = (is_image.reshape(-1), valid.reshape(-1), noise.reshape(-1))

    def run_layer():
        y, _, _ = layer(x, is_image, valid, noise)
        y.asnumpy()

    def run_allocation():
        for out in allocator(probs, *flat):
            out.asnumpy()

    times = interleaved_times({"layer": run_layer, "allocation": run_allocation}, repeats, warmup=1)
    return {"backend": layer.backend, "layer_s": median(times["layer"]), "allocation_s": median(times["allocation"]),
            "share": paired_ratio(times["allocation"], times["layer"])}


def run(size: str, report: Report) -> None:
    from benchmarks.allocation_latency import bench_allocation

    spec = SIZES[size]
    rows = bench_allocation(spec["sizes"], strategy="img_gbpr", repeats=spec["repeats"], mode="graph")
    by = {(r["num_tokens"], r["backend"]): r for r in rows}
    for num_tokens in spec["sizes"]:
        for backend in ("cpu", "composed", "numpy", "cpu-raw"):
            if (num_tokens, backend) in by:
                report.add(f"latency_ms[T={num_tokens},{backend}]", by[(num_tokens, backend)]["median_ms"], "ms")
    ratio_tokens = 16384 if 16384 in spec["sizes"] else spec["sizes"][-1]
    ratio = by[(ratio_tokens, "composed")]["median_ms"] / by[(ratio_tokens, "cpu")]["median_ms"]
    report.add(f"kernel_speedup_vs_composed[T={ratio_tokens}]", ratio, "x", ">= 5")

    tokens = spec["share_tokens"]
    share = allocation_share(tokens, spec["share_repeats"])
    note = f"H={PAPER_HIDDEN}, I={PAPER_INTERMEDIATE}, backend {share['backend']}, graph mode"
    report.add(f"evf_forward_ms[T={tokens},paper width]", 1e3 * share["layer_s"], "ms", note=note)
    report.add(f"allocation_ms[T={tokens}]", 1e3 * share["allocation_s"], "ms", note=share["backend"])
    report.add(f"allocation_share_of_evf_forward[T={tokens}]", share["share"], "fraction",
               "< 0.05", note=note)
