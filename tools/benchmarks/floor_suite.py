"""Suite `floor`: the stage-3 step against its framework floor, the same GEMMs and attention alone.

The floor is one MindSpore graph doing exactly the matrix products of the stage-3 training step,
with their shapes and count, plus the attention core (scores, softmax, weighted values) forward and,
where the step needs it, backward. Nothing else: no norms, activations, routing, loss, optimizer,
gradient reduction or host work. Which products the step needs follows from what stage 3 trains
(each EVF layer's vision FFN and router): the frozen vision tower and adapter run forward only, the
gradient flows from the loss down to layer 0's FFN (not into layer 0's attention or below), frozen
weights get no weight gradients. For the small preset this gives the 79 backward products that
MindSpore's profiler counts in the real step.

Side by side in one process: the eve-ms stage-3 step (graph mode), the floor, and the PyTorch step;
and the raw 1024 x 256 x 688 GEMM in MindSpore (graph mode) and PyTorch.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from benchmarks.common import (PRESETS, Report, eve_config, fastest_torch, interleaved_times, median, paired_ratio,
                               torch_runners)

SIZES = {"default": {"preset": "small", "repeats": 9, "gemm_repeats": 21},
         "quick": {"preset": "tiny", "repeats": 3, "gemm_repeats": 7}}
RAW_GEMM = (1024, 256, 688)  # m, k, n: [m, k] @ [k, n]


@dataclasses.dataclass(frozen=True)
class Gemm:
    """A @ B with A [batch?, m, k] (stored [k, m] when trans_a), B [batch?, k, n] (stored [n, k] when trans_b)."""

    label: str
    m: int
    k: int
    n: int
    trans_a: bool = False
    trans_b: bool = False
    batch: int = 0

    def a_shape(self):
        shape = (self.k, self.m) if self.trans_a else (self.m, self.k)
        return (self.batch, *shape) if self.batch else shape

    def b_shape(self):
        shape = (self.n, self.k) if self.trans_b else (self.k, self.n)
        return (self.batch, *shape) if self.batch else shape


@dataclasses.dataclass(frozen=True)
class AttentionCore:
    label: str
    heads: int  # batch x heads
    length: int
    head_dim: int
    backward: bool


def _dense(label, rows, fan_in, fan_out, weight_grad=False, input_grad=False, forward=True):
    out = []
    if forward:
        out.append(Gemm(f"{label} fwd", rows, fan_in, fan_out, trans_b=True))
    if input_grad:
        out.append(Gemm(f"{label} dX", rows, fan_out, fan_in))
    if weight_grad:
        out.append(Gemm(f"{label} dW", fan_out, rows, fan_in, trans_a=True))
    return out


def stage3_products(config, batch: int, seq: int):
    """(gemms, attention cores) of one stage-3 training step (see the module docstring)."""
    from eve_ms.ops.token_allocation import compute_capacity

    v, lm, evf = config.vision, config.llm, config.evf
    gemms, attention = [], []
    # frozen vision tower and adapter: forward only
    patches = batch * v.num_tokens
    gemms += _dense("patch embedding", patches, v.num_channels * v.patch_size**2, v.hidden_size)
    for i in range(v.layers_used):
        for name in ("q", "k", "v", "o"):
            gemms += _dense(f"vision{i}.{name}", patches, v.hidden_size, v.hidden_size)
        gemms += _dense(f"vision{i}.fc1", patches, v.hidden_size, v.intermediate_size)
        gemms += _dense(f"vision{i}.fc2", patches, v.intermediate_size, v.hidden_size)
        attention.append(AttentionCore(f"vision{i}", batch * v.num_heads, v.num_tokens, v.hidden_size // v.num_heads,
                                       False))
    h = lm.hidden_size
    gemms += _dense("adapter.fc1", patches, v.feature_dim, h) + _dense("adapter.fc2", patches, h, h)
    grid = v.grid_size
    gemms += _dense("adapter.block0.project", batch * grid * grid, h, h)
    gemms += _dense("adapter.block1.project", batch * config.num_image_tokens, h, h)

    tokens = batch * seq
    cap = compute_capacity(tokens, evf.capacity_factor, evf.min_capacity)
    evf_layers = set(evf.layer_indices(lm.num_layers))
    d = lm.dim_per_head
    for i in range(lm.num_layers):
        lowest = i == 0  # nothing trainable below layer 0's FFN
        for name, fan_out in (("q", lm.num_heads * d), ("k", lm.kv_heads * d), ("v", lm.kv_heads * d)):
            gemms += _dense(f"layer{i}.{name}", tokens, h, fan_out, input_grad=not lowest)
        gemms += _dense(f"layer{i}.o", tokens, lm.num_heads * d, h, input_grad=not lowest)
        attention.append(AttentionCore(f"layer{i}", batch * lm.num_heads, seq, d, not lowest))
        inner = lm.intermediate_size
        if i in evf_layers:
            gemms += _dense(f"layer{i}.router", tokens, h, 2, weight_grad=True, input_grad=not lowest)
            for expert, trains in (("language", False), ("vision", True)):
                needed = trains or not lowest  # a frozen expert's backward only carries the input gradient
                for proj in ("gate", "up"):
                    gemms += _dense(f"layer{i}.{expert}.{proj}", cap, h, inner, weight_grad=trains,
                                    input_grad=not lowest)
                gemms += _dense(f"layer{i}.{expert}.down", cap, inner, h, weight_grad=trains, input_grad=needed)
        else:
            for proj in ("gate", "up"):
                gemms += _dense(f"layer{i}.{proj}", tokens, h, inner, input_grad=not lowest)
            gemms += _dense(f"layer{i}.down", tokens, inner, h, input_grad=not lowest)
    gemms += _dense("lm_head", tokens, h, lm.vocab_size, input_grad=True)
    return gemms, attention


def _floor_cell(gemms, attention):
    """A graph-mode cell running every product once, all outputs returned.

    Every product gets its own input tensors, as in the step (distinct weights and activations):
    shared inputs would let the graph compiler merge equal products and skip work.
    """
    import mindspore as ms
    from mindspore import nn, ops

    tensors = []

    def tensor(shape):
        tensors.append(ms.Tensor(np.full(shape, 0.01, np.float32)))
        return len(tensors) - 1

    plan = []
    for g in gemms:
        prim = (ops.BatchMatMul if g.batch else ops.MatMul)(transpose_a=g.trans_a, transpose_b=g.trans_b)
        plan.append((prim, tensor(g.a_shape()), tensor(g.b_shape())))
    cores = [(tensor((a.heads, a.length, a.head_dim)), tensor((a.heads, a.length, a.head_dim)), a.backward)
             for a in attention]

    class Floor(nn.Cell):
        def __init__(self):
            super().__init__()
            self.plan = plan
            self.cores = cores
            self.scores = ops.BatchMatMul(transpose_b=True)
            self.weigh = ops.BatchMatMul()
            self.weigh_t = ops.BatchMatMul(transpose_a=True)

        def construct(self, *inputs):  # separate arguments: a tuple argument would be folded as a constant
            outputs = ()
            for prim, a, b in self.plan:
                outputs = outputs + (prim(inputs[a], inputs[b]),)
            for query, key, backward in self.cores:
                # query / key stand for q, k, v and the output gradient, which have the same shape
                probs = ops.softmax(self.scores(inputs[query], inputs[key]), -1)
                outputs = outputs + (self.weigh(probs, inputs[key]),)
                if backward:
                    grad_probs = self.scores(inputs[key], inputs[query])  # dP = dO V^T
                    grad_scores = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdims=True))
                    outputs = outputs + (self.weigh_t(probs, inputs[query]), self.weigh(grad_scores, inputs[key]),
                                         self.weigh_t(grad_scores, inputs[query]))
            return outputs

    return Floor(), tuple(tensors)


def _raw_gemm_runners():
    import mindspore as ms
    import torch
    from mindspore import nn, ops

    m, k, n = RAW_GEMM
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)

    class Gemm1(nn.Cell):
        def construct(self, x, y):
            return ops.matmul(x, y)

    cell, ma, mb = Gemm1(), ms.Tensor(a), ms.Tensor(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    np.testing.assert_allclose(cell(ma, mb).asnumpy(), (ta @ tb).numpy(), rtol=1e-4, atol=1e-3)

    def ms_run():
        cell(ma, mb).asnumpy()

    return {"mindspore": ms_run, **torch_runners(lambda: torch.mm(ta, tb))}


def run(size: str, report: Report) -> None:
    import mindspore as ms

    from benchmarks.ms_steps import stage_step
    from benchmarks.torch_eve import torch_step

    spec = SIZES[size]
    preset = spec["preset"]
    ms.set_context(mode=ms.GRAPH_MODE)
    config = eve_config(preset, evf=True)
    batch, seq = PRESETS[preset]["batch_size"], PRESETS[preset]["seq_len"]
    gemms, attention = stage3_products(config, batch, seq)
    floor, inputs = _floor_cell(gemms, attention)
    ms_step, torch_reference = stage_step(preset, 3), torch_step(preset, 3)

    def floor_run():
        for out in floor(*inputs):
            out.asnumpy()

    times = interleaved_times({"step": lambda: ms_step("graph"), "floor": floor_run, **torch_runners(torch_reference)},
                              spec["repeats"], warmup=1)
    t = {name: median(v) for name, v in times.items()}
    flops = 2 * sum(g.m * g.k * g.n * max(g.batch, 1) for g in gemms)
    flops += 2 * sum(2 * a.heads * a.length**2 * a.head_dim * (3 if a.backward else 1) for a in attention)
    backward = sum(1 for g in gemms if not g.label.endswith("fwd"))
    note = (f"{preset} preset, graph mode; {len(gemms)} GEMMs ({backward} backward) + {len(attention)} attention "
            f"cores, {flops / 1e9:.1f} GFLOP")
    report.add(f"stage3_step_ms[{preset},graph]", 1e3 * t["step"], "ms")
    report.add(f"floor_ms[{preset}]", 1e3 * t["floor"], "ms", note=note)
    report.add(f"floor_gflops[{preset}]", flops / t["floor"] / 1e9, "GFLOP/s")
    report.add(f"step_over_floor[{preset},graph]", paired_ratio(times["step"], times["floor"]), "x", "<= 1.25")
    for name in (n for n in t if n.startswith("torch")):
        report.add(f"stage3_step_ms[{preset},{name}]", 1e3 * t[name], "ms")
    best, _ = fastest_torch(t)
    report.add(f"eve_over_torch_throughput[{preset},stage3,graph]", paired_ratio(times[best], times["step"]), "x",
               ">= 0.5",
               note=f"against {best}")

    gemm_times = interleaved_times(_raw_gemm_runners(), spec["gemm_repeats"], warmup=2)
    m, k, n = RAW_GEMM
    for name, values in gemm_times.items():
        seconds = median(values)
        report.add(f"gemm_{m}x{k}x{n}_ms[{name}]", 1e3 * seconds, "ms",
                   note=f"{2 * m * k * n / seconds / 1e9:.1f} GFLOP/s")
    best, _ = fastest_torch({name: median(values) for name, values in gemm_times.items()})
    report.add(f"gemm_{m}x{k}x{n}_mindspore_time_over_torch", paired_ratio(gemm_times["mindspore"], gemm_times[best]),
               "x",
               note=f"against {best}; MindSpore graph mode incl. its call overhead, PyTorch eager")
