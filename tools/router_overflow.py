"""How often a freshly initialised router overflows an expert's capacity at the start of stage 3.

    python tools/router_overflow.py --config OUT/configs/stage3_random.yaml [--routers 2000] [--batches 4]

A stage-3 router starts as W ~ normal(0, evf.router_init_std) over the EVF layer's input (the output of the
layer's post-attention RMSNorm), and Random / GBPR send each token to argmax(W x): for two experts, the side of
the random hyperplane (w_vision - w_language) x = 0 the token lies on, whatever the std. Whether that overflows
the capacity (ceil(C T / 2) slots per expert, DESIGN section 3) depends only on the geometry of the hidden
states: how far their mean lies from the origin relative to their spread. For every EVF layer this tool builds
the stage-3 model and loader of the run yaml exactly as training does, takes the FFN inputs of the first
`--batches` training batches, draws `--routers` random directions, and prints |mean| / rms of the inputs, the
median share of real tokens on the busier side, and the share of real tokens over capacity (mean, and how often
it reaches 5 %, the demo's `capacity_binds` threshold). Nothing is trained or written.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a stage-3 run yaml (its load_checkpoint: stage 2)")
    parser.add_argument("--routers", type=int, default=2000, help="random routers drawn per batch")
    parser.add_argument("--batches", type=int, default=4, help="training batches read")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import mindspore as ms

    from eve_ms.training.config import load_train_config
    from eve_ms.training.distributed import DistInfo
    from eve_ms.training.stages import build_stage

    ms.set_context(device_target="CPU", mode=ms.PYNATIVE_MODE)  # forward hooks run in PyNative
    config = load_train_config(args.config)
    if config.stage != 3:
        raise SystemExit(f"{args.config}: stage {config.stage}; give a stage-3 run yaml")
    task = build_stage(config, DistInfo())
    model = task.network.model
    evf = model.config.evf
    layers = [i for i, layer in enumerate(model.llm.model.layers) if layer.is_evf]
    captured = {}
    for i in layers:
        def keep(cell, inputs, output, index=i):
            captured[index] = output.asnumpy()
        model.llm.model.layers[i].post_attention_layernorm.register_forward_hook(keep)

    rng = np.random.default_rng(args.seed)
    own = {i: model.llm.model.layers[i].mlp.router.weight.asnumpy().astype(np.float64) for i in layers}
    over, busiest, spread, own_over, own_busiest = ({i: [] for i in layers} for _ in range(5))
    task.network.set_train(False)
    batches = iter(task.loader)
    for _ in range(args.batches):
        batch = next(batches)
        batch = batch[0] if isinstance(batch, list) else batch
        task.network(*(ms.Tensor(batch[key]) for key in task.input_keys))
        valid = batch["attention_mask"].astype(bool).reshape(-1)
        slots, real = valid.size, int(valid.sum())
        capacity = min(slots, max(evf.min_capacity, math.ceil(evf.capacity_factor * slots / 2)))
        for i in layers:
            x = captured[i].reshape(slots, -1)[valid].astype(np.float64)
            spread[i].append(np.linalg.norm(x.mean(0)) / np.sqrt((x**2).sum(1).mean()))
            side = x @ rng.standard_normal((x.shape[1], args.routers)) > 0
            busy = np.maximum(side.sum(0), real - side.sum(0))
            busiest[i].append(busy / real)
            over[i].append(np.maximum(busy - capacity, 0) / real)
            prefers_vision = int(((x @ own[i].T).argmax(1) == 1).sum())  # ties to expert 0, as DESIGN 3
            own_busiest[i].append(max(prefers_vision, real - prefers_vision) / real)
            own_over[i].append(max(max(prefers_vision, real - prefers_vision) - capacity, 0) / real)
    print(f"{args.config}: C={evf.capacity_factor}, {args.batches} batches of {slots} slots "
          f"(capacity {capacity} per expert), {args.routers} random routers per batch")
    for i in layers:
        share, excess = np.concatenate(busiest[i]), np.concatenate(over[i])
        print(f"layer {i}: |mean|/rms {np.mean(spread[i]):.3f}; busier expert's share of real tokens: median "
              f"{np.median(share):.3f}; over capacity: mean {excess.mean():.4f}, >= 5 % in "
              f"{(excess >= 0.05).mean():.1%} of routers, > 0 in {(excess > 0).mean():.1%}; the run's own router "
              f"(seed {config.seed}): busier share {np.mean(own_busiest[i]):.3f}, over capacity {np.mean(own_over[i]):.4f}")
    worst = np.max([np.concatenate(over[i]) for i in layers], axis=0)
    print(f"some EVF layer >= 5 % over capacity: {(worst >= 0.05).mean():.1%} of router draws")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
