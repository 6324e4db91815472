"""`eve-ms plan CONFIG.yaml [CONFIG.yaml ...]`: memory and time of each stage per device, before the devices exist.

    eve-ms plan yaml_configs/eve_siglip_pangu1.5b/stage3.yaml --devices 8 --device 910B [--json OUT]

For each run yaml (a stage of `eve-ms train`): parameters, memory by part on one device, whether it
fits, the smallest change that makes it fit (as yaml lines), FLOPs and step time at a stated utilisation,
the gradient all-reduce's volume, and the stage's hours when the number of samples is known (`--samples`,
else the data file's sample count when it exists). See eve_ms/plan/devices.yaml for the devices.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from eve_ms.config import ConfigError

PART_LABELS = {
    "frozen_weights": "frozen weights", "trainable_weights": "trainable weights", "gradients": "gradients",
    "optimizer_state": "optimizer state", "activations": "activations", "evf_buffers": "EVF expert buffers",
    "logits": "logits", "working": "working memory", "framework_reserve": "framework reserve",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", metavar="CONFIG.yaml", help="run yaml(s) of `eve-ms train`")
    parser.add_argument("--devices", type=int, default=None,
                        help="data-parallel devices (default: parallel_config.data_parallel, else 1)")
    parser.add_argument("--device", default="910B", help="device kind in eve_ms/plan/devices.yaml (default 910B)")
    parser.add_argument("--utilisation", type=float, default=None,
                        help="share of the device's peak FLOP/s the step achieves (default 0.4)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="padded tokens per sample of the planned step (default: data.max_length)")
    parser.add_argument("--samples", type=int, default=None, help="samples in the stage's epoch (for its hours)")
    parser.add_argument("--fused-attention", action="store_true",
                        help="plan with flash attention (no S x S tensors kept), the Ascend fused path")
    parser.add_argument("--json", default=None, help="also write the plans to this JSON file")


def _gb(value: float) -> str:
    return f"{value / 1e9:8.2f} GB"


def _sample_count(config) -> int | None:
    path = (config.data or {}).get("data_path")
    if not path or not os.path.isfile(path):
        return None
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as fh:
            return sum(1 for line in fh if line.strip())
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    return len(data) if isinstance(data, list) else None


def format_plan(plan) -> str:
    d = plan.as_dict()
    spec, device = plan.spec, plan.device
    p = d["params"]
    lines = [
        f"== {spec.source}: stage {spec.stage} on {plan.num_devices} x {device.name} ({d['compute_dtype']})",
        f"step: micro-batch {spec.micro_batch} x {spec.seq_len} tokens, accumulation {spec.grad_accum}, "
        f"global batch {d['global_batch']}; recompute {spec.recompute_layers} of {spec.model.llm.num_layers} decoder "
        f"layers; optimizer parallel {'on' if spec.optimizer_parallel else 'off'}"
        + ("; flash attention" if spec.fused_attention else ""),
        f"parameters: total {p['total'] / 1e9:.3f}B (vision {p['vision'] / 1e6:.0f}M, "
        f"adapter {p['adapter'] / 1e6:.1f}M, "
        f"LLM {p['llm'] / 1e9:.3f}B, EVF extra {p['evf_extra'] / 1e6:.0f}M), activated {p['activated'] / 1e9:.3f}B, "
        f"trainable {p['trainable'] / 1e6:.1f}M",
        "memory per device:",
    ]
    for key, label in PART_LABELS.items():
        lines.append(f"  {label:<20}{_gb(d['memory_bytes'][key])}")
    per_layer = d["per_layer_activation_bytes"]
    lines.append(f"  {'(one decoder layer:':<20}{_gb(per_layer['without_recompute_max'])} saved, "
                 f"{per_layer['with_recompute'] / 1e9:.3f} GB recomputed)")
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines.append(f"  {'total':<20}{_gb(d['memory_bytes']['total'])} of {device.memory_gb:g} GB: {verdict}")
    f, t = d["flops"], d["time"]
    lines.append(f"FLOPs per step and device: {f['total'] / 1e12:.1f} T (forward {f['forward'] / 1e12:.1f}, "
                 f"backward {f['backward'] / 1e12:.1f}, recompute {f['recompute'] / 1e12:.1f})")
    lines.append(f"step time at {plan.utilisation:.0%} of {device.peak_flops(spec.compute_dtype) / 1e12:.0f} TFLOP/s: "
                 f"{t['step_s']:.3f} s (compute {t['compute_s']:.3f}, all-reduce {t['allreduce_s']:.3f} of "
                 f"{t['allreduce_bytes_per_device'] / 1e9:.2f} GB per device, update {t['update_s']:.3f})")
    if "hours" in t:
        lines.append(f"stage: {t['samples']} samples = {t['steps']} steps: {t['hours']:.2f} h on {plan.num_devices} "
                     f"devices ({t['hours'] * plan.num_devices / 24:.2f} device-days)")
    for advice in plan.advice:
        lines.append(f"fits with ({_gb(advice.memory_total).strip()}, step {advice.step_s:.3f} s); add to the yaml:")
        lines += ["    " + line for line in advice.yaml_lines().splitlines()]
    lines += [f"note: {note}" for note in d["notes"]]
    return "\n".join(lines)


def run(args) -> int:
    from eve_ms.plan.devices import get_device
    from eve_ms.plan.planner import DEFAULT_UTILISATION, plan_stage
    from eve_ms.plan.stage import stage_spec
    from eve_ms.training.config import load_train_config

    plans = []
    try:
        device = get_device(args.device)
        for path in args.configs:
            config = load_train_config(path)
            spec = stage_spec(config, args.seq_len)
            spec.fused_attention = args.fused_attention
            devices = args.devices or config.parallel_config.data_parallel or 1
            samples = args.samples or _sample_count(config)
            plan = plan_stage(spec, device, devices, args.utilisation or DEFAULT_UTILISATION, samples)
            if devices != spec.data_parallel and spec.data_parallel is not None:
                plan.notes.append(f"the yaml sets parallel_config.data_parallel: {spec.data_parallel}; "
                                  f"planned on {devices} devices")
            plans.append(plan)
            print(format_plan(plan))
            print()
    except ConfigError as err:
        print(f"eve-ms plan: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump([p.as_dict() for p in plans], fh, indent=2)
    return 0
