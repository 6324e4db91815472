"""Cost model of the ImgGbprAllocation kernel on an Atlas A2 (910B) vector core, fed by the host check.

The host check counts, for every vector core and every interval between two SyncAlls, the vector
instructions and the bytes they sweep, the scalar Unified Buffer accesses, and the DMAs with their
bytes (host_check.py, `Run.stats`). This model turns counts into cycles with per-operation costs
(PARAMS, each an assumption to confirm on an NPU), takes the slowest core of each interval (the
next SyncAll waits for it), and adds a fixed cost per software SyncAll:

    time = sum over intervals of max over cores of cycles(core, interval) / f  +  SyncAlls * t_sync

    cycles = vec_instr * vec_issue + vec_bytes / 256 * vec_repeat + scalar_accesses * scalar_access
           + dmas * dma_issue + dma_bytes / dma_bytes_per_cycle

    python ascend_kernels/img_gbpr/host_check/cost_model.py [--tokens 32768] [--strategy img_gbpr]

docs/ascend_cost_model.md explains the parameters and gives the prediction at 32k tokens.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import host_check as hc  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Params:
    """Per-operation costs of one Atlas A2 vector core (assumptions; see docs/ascend_cost_model.md)."""

    clock_ghz: float = 1.8           # AI Core clock
    vec_issue: float = 25.0          # cycles to issue and drain one vector instruction
    vec_repeat: float = 1.0          # cycles per 256-byte repeat
    scalar_access: float = 6.0       # cycles per scalar UB load/store, with the integer work around it
    dma_issue: float = 60.0          # cycles per DataCopy/DataCopyPad instruction (descriptor + first burst)
    dma_bytes_per_cycle: float = 32.0  # GM <-> UB per core (about 58 GB/s at 1.8 GHz; L2-resident data)
    sync_us: float = 2.0             # one software SyncAll after the last core arrives (GM flag write + poll)


def interval_cycles(stats: np.ndarray, p: Params) -> np.ndarray:
    """Cycles per [interval, core] from the host-check counters [interval, core, counter]."""
    c = {name: stats[..., i].astype(np.float64) for i, name in enumerate(hc.COUNTERS)}
    return (c["vec_instr"] * p.vec_issue + c["vec_bytes"] / 256 * p.vec_repeat
            + (c["scalar_reads"] + c["scalar_writes"]) * p.scalar_access
            + (c["mte2_count"] + c["mte3_count"]) * p.dma_issue
            + (c["mte2_bytes"] + c["mte3_bytes"]) / p.dma_bytes_per_cycle)


def predict_us(run: hc.Run, p: Params = Params()) -> dict:
    """Predicted kernel time (µs) of a host-check run, split into work and SyncAll waits."""
    cycles = interval_cycles(run.stats, p)
    work_us = float(cycles.max(axis=1).sum()) / (p.clock_ghz * 1e3)
    sync_us = run.sync_alls * p.sync_us
    return {"work_us": work_us, "sync_us": sync_us, "total_us": work_us + sync_us,
            "slowest_core_per_interval_us": (cycles.max(axis=1) / (p.clock_ghz * 1e3)).tolist()}


def stage3_inputs(num_tokens: int, seed: int = 0, image_share: float = 0.3, valid_share: float = 0.95):
    """A stage-3 batch: router logits of a fresh router (normal, std 0.5), 30 % image tokens, 5 % padding."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 0.5, (num_tokens, 2))
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    return probs, rng.random(num_tokens) < image_share, rng.random(num_tokens) < valid_share, \
        rng.random(num_tokens).astype(np.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--strategy", default="img_gbpr", choices=sorted(hc.STRATEGY_CODES))
    parser.add_argument("--capacity-factor", type=float, default=1.5)
    parser.add_argument("--image-share", type=float, default=0.3)
    parser.add_argument("--cores", type=int, default=hc.ATLAS_A2_AIV_CORES)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from eve_ms.ops.token_allocation import allocate_reference

    host = hc.HostCheck()
    inputs = stage3_inputs(args.tokens, image_share=args.image_share)
    ref = allocate_reference(*inputs, strategy=args.strategy, capacity_factor=args.capacity_factor)
    run = host.run(*inputs, ref["capacity"], args.strategy, aiv_cores=args.cores)
    assert (run.expert == ref["expert"]).all() and (run.slot == ref["slot"]).all()
    f = run.tiling.fields
    print(f"T={args.tokens} {args.strategy} cf={args.capacity_factor}: {run.blocks} cores x {f['rangeLen']} tokens, "
          f"{run.sync_alls} SyncAlls, UB {run.ub_peak} B/core, redistributed {int(ref['redistributed'])}")
    print("interval  " + "  ".join(f"{c:>13}" for c in hc.COUNTERS) + "   slowest core (µs)")
    prediction = predict_us(run)
    for e, slowest in enumerate(prediction["slowest_core_per_interval_us"]):
        row = run.stats[e].max(axis=0)
        print(f"{e:8d}  " + "  ".join(f"{int(v):13d}" for v in row) + f"   {slowest:8.2f}")
    print(f"predicted: work {prediction['work_us']:.1f} µs + SyncAll {prediction['sync_us']:.1f} µs = "
          f"{prediction['total_us']:.1f} µs (kernel only, launch not included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
