"""Suite `plan`: `eve-ms plan`'s predictions for a step against what the same step measures on this machine.

Memory: for the tiny and small presets, stages 2 and 3 (the steps `step_probe.py` runs, in fresh
processes), the planner's memory (float32 on CPU; its framework reserve the pool a fresh eve-ms process holds
after one op, measured apart by `framework_pool_bytes`) against what the same step holds, measured the way a device would: MindSpore's CPU memory pool, where every tensor the
step allocates lives (activations, logits, the backward's temporaries, the gradient buffers), read as
the pool's resident high-water mark (`common.memory_pool_bytes`), plus the weights and AdamW moments
(host arrays outside the pool on CPU, counted from the Parameter objects). The small preset's stage-3
step is also measured at twice the micro-batch: the pool's growth against the planner's.

The process's resident memory is reported beside it, not as the target: on CPU it also holds the
interpreter and MindSpore's libraries (the baseline, ~760 MiB), the compiled graphs (~450 MiB for the
small step, the same at any batch) and the CPU kernels' own host buffers outside the pool, which grow
with the batch (~0.9 GiB per 4 small-preset sequences, measured; no device has them: on Ascend a kernel's
workspace comes from the device pool for the kernel's duration). What was measured and ruled out
(README, "Planning a run"): MindSpore's CPU backend does reuse a tensor's memory after its last use
(`pool_reuse.py`), and glibc's arenas, its mmap threshold, jit_level and memory_optimize_level change
nothing.

FLOPs: the planner's forward + backward FLOPs of the stage-3 step against an independent count, the
floor suite's list of the step's matrix products and attention cores (`floor_suite.stage3_products`,
written for the floor benchmark from what MindSpore's profiler counts in the real step).
"""
from __future__ import annotations

import os
import subprocess
import sys

from benchmarks.common import LORA, PRESETS, Report, eve_config

SIZES = {"default": {"presets": ("tiny", "small"), "steps": 2, "doubled": "small"},
         "quick": {"presets": ("tiny",), "steps": 1, "doubled": None}}
MEMORY_TARGET = "0.8..1.25"


def bench_spec(preset: str, stage: int, batch_size: int | None = None):
    """The planner's `StageSpec` of the benchmark's step (benchmarks.ms_steps): float32, LoRA on every nn.Dense."""
    from eve_ms.plan.inventory import llm_denses
    from eve_ms.plan.stage import StageSpec

    config = eve_config(preset, evf=stage == 3)
    spec = PRESETS[preset]
    names = sorted({d.role.rsplit(".", 1)[-1] for d in llm_denses(config)})  # apply_lora(None): every nn.Dense
    return StageSpec(stage=stage, model=config, micro_batch=batch_size or spec["batch_size"], grad_accum=1,
                     seq_len=spec["seq_len"], compute_dtype="float32", lora_rank=LORA["lora_rank"],
                     lora_dropout=LORA["lora_dropout"], lora_targets=names)


def planned_flops(preset: str, stage: int) -> float:
    from eve_ms.plan.step import StepModel

    step = StepModel(bench_spec(preset, stage))
    return step.forward_flops + step.backward_flops


def independent_flops(preset: str) -> float:
    """Stage-3 FLOPs from the floor suite's product list (2 m k n per GEMM; 4 / 12 heads x S^2 x d per core)."""
    from benchmarks.floor_suite import stage3_products

    spec = PRESETS[preset]
    gemms, attention = stage3_products(eve_config(preset, evf=True), spec["batch_size"], spec["seq_len"])
    flops = 2 * sum(g.m * g.k * g.n * max(g.batch, 1) for g in gemms)
    flops += 2 * sum(2 * a.heads * a.length**2 * a.head_dim * (3 if a.backward else 1) for a in attention)
    return float(flops)


# A fresh process as every eve-ms run starts (MindFormers imported: the model files register with it), one
# eager op, MindSpore's pool read: the fixed memory a process holds before any model tensor. Measured with
# MindSpore 2.9 + MindFormers 1.9: ~35 MiB (4 KiB without MindFormers); it is the framework's reserve on
# this "device", the counterpart of the driver reserve in devices.yaml, and independent of the model.
_RESERVE_PROBE = (
    "import sys; sys.path[:0] = [{repo!r}, {tools!r}]\n"
    "from eve_ms.mindformers_env import import_mindformers\n"
    "import_mindformers()\n"
    "import mindspore as ms\n"
    "from eve_ms.runtime import setup_context\n"
    "setup_context('CPU', mode='graph')\n"
    "ms.ops.ones(1, ms.float32).asnumpy()\n"
    "from benchmarks.common import memory_pool_bytes\n"
    "print(memory_pool_bytes())\n"
)


def framework_pool_bytes() -> int:
    """MindSpore's CPU pool in a fresh eve-ms process after its first op, before any model (see above)."""
    tools = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _RESERVE_PROBE.format(repo=os.path.dirname(tools), tools=tools)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, GLOG_v="3"))
    if result.returncode:
        raise RuntimeError(f"framework reserve probe failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return int(result.stdout.strip().splitlines()[-1])


def run(size: str, report: Report) -> None:
    from benchmarks.train_suite import probe_many
    from eve_ms.plan.memory import memory_parts

    spec = SIZES[size]
    configs = [(preset, stage) for preset in spec["presets"] for stage in (2, 3)]
    doubled = spec["doubled"]
    probes = [dict(preset=p, stage=s, steps=spec["steps"]) for p, s in configs]
    if doubled:  # the same step at twice the micro-batch: what the batch-dependent memory adds
        probes.append(dict(preset=doubled, stage=3, steps=spec["steps"], batch_size=2 * PRESETS[doubled]["batch_size"]))
    measured = probe_many(probes)
    reserve = framework_pool_bytes()
    for (preset, stage), result in zip(configs, measured):
        parts = memory_parts(bench_spec(preset, stage), reserve_bytes=reserve)
        predicted = parts["total"]
        model_parts = predicted - reserve
        held = result["pool_step"] + result["state_bytes"]
        tag = f"{preset},stage{stage}"
        biggest = sorted(((v, k) for k, v in parts.items() if k not in ("total", "framework_reserve")), reverse=True)
        report.add(f"plan_memory_over_measured[{tag}]", predicted / held, "x", MEMORY_TARGET,
                   note=f"planned {predicted / 2**20:.1f} MiB = framework reserve {reserve / 2**20:.1f} (measured "
                        f"apart: a fresh process's pool after one op) + the step's parts {model_parts / 2**20:.1f} "
                        "(largest: " + ", ".join(f"{k} {v / 2**20:.1f}" for v, k in biggest[:3])
                        + f"); measured {held / 2**20:.1f} MiB = MindSpore's pool {result['pool_step'] / 2**20:.1f} "
                          f"(gradient buffers {result['accum_bytes'] / 2**20:.1f} of it) + weights and AdamW "
                          f"moments {result['state_bytes'] / 2**20:.1f}")
        in_graph = model_parts - parts["frozen_weights"] - parts["trainable_weights"] - parts["optimizer_state"]
        graph = in_graph - parts["gradients"]  # what the step's graph adds to the pool (buffers exist before)
        grown = result["pool_step"] - result["pool_built"]
        report.add(f"plan_step_memory_over_pool_growth[{tag}]", graph / grown, "x",
                   note=f"planned activations, logits, working and EVF buffers {graph / 2**20:.1f} MiB; the pool "
                        f"grew {grown / 2**20:.1f} MiB in the steps (from {result['pool_built'] / 2**20:.1f} MiB "
                        "after building the model, which touched it)")
        above = result["peak_step_rss"] - result["baseline_rss"]
        report.add(f"plan_memory_over_process_rss[{tag}]", model_parts / above, "x",
                   note=f"whole process above its {result['baseline_rss'] / 2**20:.0f} MiB baseline: "
                        f"{above / 2**20:.0f} MiB, of which {(above - held) / 2**20:.0f} MiB outside the pool and "
                        "the weights (compiled graphs, CPU kernels' host buffers); not a device's memory")
    if doubled:
        batch = PRESETS[doubled]["batch_size"]
        single = dict(zip(configs, measured))[(doubled, 3)]
        planned = (memory_parts(bench_spec(doubled, 3, 2 * batch))["total"]
                   - memory_parts(bench_spec(doubled, 3))["total"])
        grown = measured[-1]["pool_step"] - single["pool_step"]
        report.add(f"plan_batch_memory_over_measured[{doubled},stage3,{batch}->{2 * batch}]", planned / grown, "x",
                   MEMORY_TARGET, note=f"planned {planned / 2**20:.0f} MiB more for {batch} more sequences, "
                                       f"MindSpore's pool grew {grown / 2**20:.0f} MiB; the process's RSS "
                                       f"{(measured[-1]['peak_step_rss'] - single['peak_step_rss']) / 2**20:.0f} MiB")
    for preset in spec["presets"]:
        planned, counted = planned_flops(preset, 3), independent_flops(preset)
        report.add(f"plan_flops_over_independent[{preset},stage3]", planned / counted, "x", "0.95..1.05",
                   note=f"planned {planned / 1e9:.2f} GFLOP, floor suite's products {counted / 1e9:.2f} GFLOP")
