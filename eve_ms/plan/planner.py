"""A stage's plan on N devices of one kind: memory by part, FLOPs, step time, communication, and advice.

Step time = FLOPs of the step on one device (forward, backward, recompute; every micro-batch of the
accumulation) / (peak FLOP/s of the compute dtype x utilisation) + the gradient all-reduce (a ring over
N devices: 2 (N-1)/N of the float32 gradient buffers per device, at the slowest link the ring crosses;
the trainer reduces after the backward pass, in a graph of its own, so nothing overlaps it) + the AdamW
update (memory-bound: seven float32 reads/writes per trainable weight at the device's HBM bandwidth).
`utilisation` is stated, not measured: the hardware FLOP/s share the step achieves (recompute counted).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from eve_ms.plan.devices import DeviceSpec
from eve_ms.plan.inventory import param_counts
from eve_ms.plan.memory import memory_parts, trainable_params
from eve_ms.plan.stage import StageSpec
from eve_ms.plan.step import StepModel

DEFAULT_UTILISATION = 0.4
F32 = 4


@dataclass
class Plan:
    spec: StageSpec
    device: DeviceSpec
    num_devices: int
    utilisation: float
    memory: dict
    flops: dict
    time: dict
    params: dict
    per_layer: dict
    advice: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.memory["total"] <= self.device.memory_gb * 1e9

    def as_dict(self) -> dict:
        spec = self.spec
        return {
            "stage": spec.stage, "config": spec.source, "device": self.device.key, "num_devices": self.num_devices,
            "compute_dtype": self.device.compute_dtype(spec.compute_dtype), "micro_batch": spec.micro_batch,
            "gradient_accumulation_steps": spec.grad_accum, "seq_len": spec.seq_len,
            "global_batch": spec.micro_batch * spec.grad_accum * self.num_devices,
            "recompute_layers": spec.recompute_layers, "optimizer_parallel": spec.optimizer_parallel,
            "params": self.params, "memory_bytes": self.memory, "per_layer_activation_bytes": self.per_layer,
            "fits": self.fits, "device_memory_bytes": self.device.memory_gb * 1e9, "flops": self.flops,
            "utilisation": self.utilisation, "time": self.time, "advice": [a.as_dict() for a in self.advice],
            "notes": self.notes,
        }


@dataclass
class Advice:
    micro_batch: int
    grad_accum: int
    recompute_layers: int
    memory_total: float
    step_s: float
    changes: dict  # yaml section -> {key: value}

    def yaml_lines(self) -> str:
        lines = []
        for section, keys in self.changes.items():
            lines.append(f"{section}:")
            lines += [f"  {key}: {str(value).lower() if isinstance(value, bool) else value}"
                      for key, value in keys.items()]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"micro_batch": self.micro_batch, "gradient_accumulation_steps": self.grad_accum,
                "recompute_layers": self.recompute_layers, "memory_total_bytes": self.memory_total,
                "step_s": self.step_s, "yaml": self.yaml_lines()}


def _estimate(spec: StageSpec, device: DeviceSpec, num_devices: int, utilisation: float):
    step = StepModel(spec)
    memory = memory_parts(spec, step, device.reserve_bytes)
    accum = spec.grad_accum
    flops = {"forward": step.forward_flops * accum, "backward": step.backward_flops * accum,
             "recompute": step.recompute_flops * accum}
    flops["total"] = sum(flops.values())
    flops["model_per_sample"] = (step.forward_flops + step.backward_flops) / spec.micro_batch
    train = trainable_params(spec)
    compute_s = flops["total"] / (device.peak_flops(spec.compute_dtype) * utilisation)
    grad_bytes = F32 * train
    comm_bytes = 2 * (num_devices - 1) / num_devices * grad_bytes if num_devices > 1 else 0.0
    if spec.optimizer_parallel and num_devices > 1:
        comm_bytes += (num_devices - 1) / num_devices * grad_bytes  # updated weights broadcast by their owner
    comm_s = comm_bytes / device.link_bytes_per_s(num_devices) if comm_bytes else 0.0
    update_share = 1 / num_devices if spec.optimizer_parallel and num_devices > 1 else 1.0
    update_s = 7 * F32 * train * update_share / (device.hbm_gbps * 1e9)
    time = {"compute_s": compute_s, "allreduce_s": comm_s, "update_s": update_s,
            "step_s": compute_s + comm_s + update_s, "allreduce_bytes_per_device": comm_bytes,
            "gradient_bytes": grad_bytes}
    return step, memory, flops, time


def plan_stage(spec: StageSpec, device: DeviceSpec, num_devices: int, utilisation: float = DEFAULT_UTILISATION,
               samples: Optional[int] = None, advise: bool = True) -> Plan:
    """The plan of `spec` on `num_devices` x `device` (samples: the stage's data size, for its hours)."""
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    step, memory, flops, time = _estimate(spec, device, num_devices, utilisation)
    notes = list(spec.notes)
    dtype = device.compute_dtype(spec.compute_dtype)
    if dtype != spec.compute_dtype:
        notes.append(f"{device.key} has no {spec.compute_dtype}: planned in {dtype} "
                     "(as the Eve release trained on V100)")
    global_batch = spec.micro_batch * spec.grad_accum * num_devices
    if samples:
        steps = math.ceil(samples / global_batch)
        time.update({"samples": samples, "steps": steps, "hours": steps * time["step_s"] / 3600})
    llm = spec.model.llm
    per_layer = {"without_recompute_max": max(step.activation_bytes_per_layer(i) for i in range(llm.num_layers)),
                 "with_recompute": step.layer_input_bytes()}
    params = dict(param_counts(spec.model), trainable=trainable_params(spec))
    plan = Plan(spec, device, num_devices, utilisation, memory, flops, time, params, per_layer, notes=notes)
    if spec.optimizer_parallel:
        notes.append("optimizer parallel (MindSpore data_parallel mode) splits the AdamW update over the devices "
                     "but not its state: every rank holds both moments of every weight")
    if advise and not plan.fits:
        plan.advice = advise_fit(spec, device, num_devices, utilisation)
        if not plan.advice:
            notes.append("nothing in reach fits: not micro-batch 1 with every decoder layer recomputed; use more "
                         "memory per device or shorter sequences")
    return plan


def _candidates(spec: StageSpec):
    """(micro_batch, grad_accum, recompute_layers) keeping the global batch: micro-batch halved while it divides."""
    batches, b = [], spec.micro_batch
    while b >= 1:
        batches.append(b)
        if b % 2:
            break
        b //= 2
    for micro in batches:
        accum = spec.grad_accum * (spec.micro_batch // micro)
        for layers in range(spec.recompute_layers, spec.model.llm.num_layers + 1):
            yield micro, accum, layers


def advise_fit(spec: StageSpec, device: DeviceSpec, num_devices: int, utilisation: float,
               limit: int = 3) -> list[Advice]:
    """Settings that fit, best first (the fastest predicted step, then the fewest yaml changes, then the larger
    micro-batch): the best with a smaller micro-batch only and the best with recompute only; both together
    only when neither alone fits. The first is the smallest change."""
    capacity = device.memory_gb * 1e9
    fitting = []
    for micro, accum, layers in _candidates(spec):
        candidate = spec.with_changes(micro_batch=micro, grad_accum=accum, recompute_layers=layers)
        _, memory, _, time = _estimate(candidate, device, num_devices, utilisation)
        if memory["total"] > capacity:
            continue
        changes = {}
        if micro != spec.micro_batch:
            changes["runner_config"] = {"batch_size": micro, "gradient_accumulation_steps": accum}
        if layers != spec.recompute_layers:
            value = True if layers == spec.model.llm.num_layers else layers
            changes["recompute_config"] = {"recompute": value}
        fitting.append(Advice(micro, accum, layers, memory["total"], time["step_s"], changes))
    fitting.sort(key=lambda a: (round(a.step_s, 9), len(a.changes), -a.micro_batch, a.recompute_layers))
    best = {}
    for advice in fitting:  # the best of each kind: micro-batch only, recompute only, both
        best.setdefault(tuple(sorted(advice.changes)), advice)
    singles = [a for kind, a in best.items() if len(kind) == 1]
    chosen = sorted(singles or list(best.values()), key=lambda a: fitting.index(a))
    return chosen[:limit]
