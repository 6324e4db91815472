"""Suite `train`: training-step throughput of stages 1-3, eve-ms (graph, PyNative) against PyTorch.

Per preset and stage, in one process, taking turns: the eve-ms `Trainer.train_step` in graph mode
and in PyNative mode (context as `eve_ms.runtime.setup_context` sets it), and the PyTorch step of
`benchmarks.torch_eve`. Reported: tokens/s of each, eve-ms graph / PyTorch throughput, the first
graph-mode step's extra time (graph compilation of the step's three graphs), and the EVF overhead
(stage-3 step / stage-2 step, graph mode).

In fresh processes (`step_probe.py`): the peak resident memory of stage-2 and stage-3 steps at the
same batch, and PyNative with `pynative_synchronize=True` (a start-up setting), next to graph mode.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import Report, fastest_torch, interleaved_times, median, paired_ratio, torch_runners

SIZES = {
    "default": {"presets": ("tiny", "small"), "stages": (1, 2, 3), "repeats": {"tiny": 5, "small": 3},
                "pynative_repeats": {"tiny": 3, "small": 1}, "pynative_warmup": {"tiny": 1, "small": 0},
                "probe_preset": "small", "probe_steps": 2, "sync_probe": True},
    "quick": {"presets": ("tiny",), "stages": (2, 3), "repeats": {"tiny": 2}, "pynative_repeats": {"tiny": 1},
              "pynative_warmup": {"tiny": 0}, "probe_preset": "tiny", "probe_steps": 1, "sync_probe": False},
}
PROBE = Path(__file__).resolve().parent / "step_probe.py"


def _probe_command(preset: str, stage: int, mode: str = "graph", steps: int = 2, pynative_sync: bool = False,
                   threads: int | None = None, batch_size: int | None = None) -> list:
    cmd = [sys.executable, str(PROBE), "--preset", preset, "--stage", str(stage), "--mode", mode,
           "--steps", str(steps)]
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    if pynative_sync:
        cmd.append("--pynative-sync")
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd


def probe_many(configs: list) -> list:
    """Run `step_probe.py` once per config (keyword arguments of `_probe_command`), all at the same time:
    their memory readings do not depend on each other (their timings would, so none is used)."""
    env = dict(os.environ, GLOG_v="3")
    commands = [_probe_command(**config) for config in configs]
    running = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for cmd in commands]
    results = []
    for cmd, proc in zip(commands, running):
        out, err = proc.communicate(timeout=1800)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if proc.returncode or not lines:
            raise RuntimeError(f"step probe {' '.join(cmd[1:])} failed ({proc.returncode}):\n{err[-2000:]}")
        results.append(json.loads(lines[-1]))
    return results


def probe(**config) -> dict:
    """Run `step_probe.py` in a fresh process (alone, so its timings count); its JSON result."""
    return probe_many([config])[0]


def run(size: str, report: Report, threads: int) -> dict:
    """Returns {preset: {stage: {runner: seconds}}} for the suites that reuse it."""
    from benchmarks.ms_steps import stage_step
    from benchmarks.torch_eve import torch_step

    spec = SIZES[size]
    measured = {}
    for preset in spec["presets"]:
        measured[preset] = {}
        for stage in spec["stages"]:
            ms_step, reference = stage_step(preset, stage), torch_step(preset, stage)
            runners = {"graph": lambda: ms_step("graph"), "pynative": lambda: ms_step("pynative"),
                       **torch_runners(reference)}
            times = interleaved_times(runners, spec["repeats"][preset], warmup=1,
                                      max_rounds={"pynative": spec["pynative_repeats"][preset]},
                                      warmups={"pynative": spec["pynative_warmup"][preset]})
            t = {name: median(v) for name, v in times.items()}
            measured[preset][stage] = t
            tokens = ms_step.tokens
            tag = f"{preset},stage{stage}"
            report.add(f"tokens_per_s[{tag},graph]", tokens / t["graph"], "tok/s")
            report.add(f"tokens_per_s[{tag},pynative]", tokens / t["pynative"], "tok/s")
            for name in (n for n in t if n.startswith("torch")):
                report.add(f"tokens_per_s[{tag},{name}]", tokens / t[name], "tok/s",
                           note=f"trainable: eve-ms {sum(int(p.size) for p in ms_step.trainer.params)}, "
                                f"torch {reference.trainable}")
            best, _ = fastest_torch(t)
            report.add(f"eve_over_torch_throughput[{tag},graph]", paired_ratio(times[best], times["graph"]), "x",
                       ">= 0.5",
                       note=f"against {best}")
            report.add(f"first_step_compile_s[{tag}]", ms_step.first_call_s["graph"] - t["graph"], "s",
                       note="first graph-mode step minus a steady one")
        report.add(f"evf_overhead_stage3_over_stage2[{preset},graph]",
                   measured[preset][3]["graph"] / measured[preset][2]["graph"], "x")

    preset, steps = spec["probe_preset"], spec["probe_steps"]
    memory = probe_many([dict(preset=preset, stage=stage, steps=steps, threads=threads) for stage in (2, 3)])
    memory = dict(zip((2, 3), memory))
    for stage, result in memory.items():
        report.add(f"peak_step_rss_mb[{preset},stage{stage}]", result["peak_step_rss"] / 2**20, "MiB",
                   note=f"process baseline {result['baseline_rss'] / 2**20:.0f} MiB, whole-run peak "
                        f"{result['peak_rss'] / 2**20:.0f} MiB, batch {result['samples']} x "
                        f"{result['tokens'] // result['samples']} tokens")
    peak2, peak3 = memory[2]["peak_step_rss"], memory[3]["peak_step_rss"]
    report.add(f"peak_rss_stage3_over_stage2[{preset}]", peak3 / peak2, "x", "<= 1.15")
    base2, base3 = memory[2]["baseline_rss"], memory[3]["baseline_rss"]
    report.add(f"peak_rss_above_baseline_stage3_over_stage2[{preset}]", (peak3 - base3) / (peak2 - base2), "x",
               note="memory the model, its graphs and the step add to the bare process")

    if spec["sync_probe"]:
        preset = spec["presets"][0]
        sync = probe(preset=preset, stage=2, mode="pynative", steps=spec["probe_steps"], pynative_sync=True,
                     threads=threads)
        graph = measured[preset][2]["graph"]
        report.add(f"tokens_per_s[{preset},stage2,pynative_synchronize]", sync["tokens"] / sync["step_s"], "tok/s",
                   note=f"separate process; {sync['step_s'] / graph:.1f}x the in-process graph-mode step")
    return measured
