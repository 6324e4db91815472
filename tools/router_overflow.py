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


def mean_over_rms(x: np.ndarray) -> float:
    """|mean| / rms of the rows of x (tokens x features): 0 for directions spread evenly around the origin,
    1 when every token is the same vector."""
    return float(np.linalg.norm(x.mean(0)) / np.sqrt((x**2).sum(1).mean()))


def random_router_split(x: np.ndarray, capacity: int, routers: int, rng) -> tuple:
    """For `routers` random two-expert routers over the tokens x (real tokens only): the busier expert's share of
    the tokens and the share over its `capacity` slots (DESIGN 3: argmax of W x is the side of the random
    hyperplane (w_1 - w_0) x = 0 a token lies on, whatever the weights' scale)."""
    side = x @ rng.standard_normal((x.shape[1], routers)) > 0
    busy = np.maximum(side.sum(0), len(x) - side.sum(0))
    return busy / len(x), np.maximum(busy - capacity, 0) / len(x)


def _softmax(logits):
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def measure(config_path: str, routers: int = 2000, batches: int = 4, seed: int = 0) -> dict:
    """Per EVF layer: |mean|/rms of its inputs, the busier expert's share and the share over capacity for
    `routers` random routers per batch, and the run's own router's preferred-expert counts (per batch)."""
    import mindspore as ms

    from eve_ms.training.config import load_train_config
    from eve_ms.training.distributed import DistInfo
    from eve_ms.training.stages import build_stage

    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)  # forward hooks run in PyNative
    try:
        config = load_train_config(config_path)
        if config.stage != 3:
            raise ValueError(f"{config_path}: stage {config.stage}; give a stage-3 run yaml")
        task = build_stage(config, DistInfo())
        model = task.network.model
        evf = model.config.evf
        layers = [i for i, layer in enumerate(model.llm.model.layers) if layer.is_evf]
        captured = {}
        for i in layers:
            def keep(cell, inputs, output, index=i):
                captured[index] = output.asnumpy()
            model.llm.model.layers[i].post_attention_layernorm.register_forward_hook(keep)
        own = {i: model.llm.model.layers[i].mlp.router.weight.asnumpy().astype(np.float64) for i in layers}
        rng = np.random.default_rng(seed)
        out = {"capacity_factor": evf.capacity_factor, "run_seed": config.seed, "strategy": evf.strategy, "layers": {}}
        per_layer = {i: {"spread": [], "busiest": [], "over": [], "own_vision": [], "own_real": [], "own_over": []}
                     for i in layers}
        task.network.set_train(False)
        loader = iter(task.loader)
        for _ in range(batches):
            batch = next(loader)
            batch = batch[0] if isinstance(batch, list) else batch
            task.network(*(ms.Tensor(batch[key]) for key in task.input_keys))
            valid = batch["attention_mask"].astype(bool).reshape(-1)
            slots, real = valid.size, int(valid.sum())
            capacity = min(slots, max(evf.min_capacity, math.ceil(evf.capacity_factor * slots / 2)))
            out.update(slots=slots, capacity=capacity)
            for i in layers:
                x = captured[i].reshape(slots, -1)[valid].astype(np.float64)
                stats = per_layer[i]
                stats["spread"].append(mean_over_rms(x))
                busiest, over = random_router_split(x, capacity, routers, rng)
                stats["busiest"].append(busiest)
                stats["over"].append(over)
                # the run's own router prefers by its strategy (DESIGN 3): argmax P, or argmax P + prior for
                # img_gbpr (the prior beta on the token's own modality); ties to expert 0
                scores = _softmax(x @ own[i].T)
                if evf.strategy == "img_gbpr":
                    image = batch["input_ids"].reshape(-1)[valid] == model.config.image_token_index
                    scores = scores + evf.beta * np.stack([~image, image], axis=1)
                vision = int((scores.argmax(1) == 1).sum())
                stats["own_vision"].append(vision)
                stats["own_real"].append(real)
                stats["own_over"].append(max(max(vision, real - vision) - capacity, 0) / real)
    finally:
        ms.set_context(mode=mode)
    for i, stats in per_layer.items():
        busiest, over = np.concatenate(stats["busiest"]), np.concatenate(stats["over"])
        out["layers"][i] = {
            "mean_over_rms": float(np.mean(stats["spread"])), "median_busiest_share": float(np.median(busiest)),
            "mean_over_capacity": float(over.mean()), "p_over_5pct": float((over >= 0.05).mean()),
            "p_over_0": float((over > 0).mean()), "over_per_router": over,
            "own_prefers_vision": stats["own_vision"], "own_real": stats["own_real"],
            "own_over_capacity": float(np.mean(stats["own_over"])),
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a stage-3 run yaml (its load_checkpoint: stage 2)")
    parser.add_argument("--routers", type=int, default=2000, help="random routers drawn per batch")
    parser.add_argument("--batches", type=int, default=4, help="training batches read")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import mindspore as ms

    ms.set_context(device_target="CPU")
    result = measure(args.config, args.routers, args.batches, args.seed)
    print(f"{args.config}: C={result['capacity_factor']}, {args.batches} batches of {result['slots']} slots "
          f"(capacity {result['capacity']} per expert), {args.routers} random routers per batch")
    for i, layer in result["layers"].items():
        own = sum(max(v, r - v) for v, r in zip(layer["own_prefers_vision"], layer["own_real"]))
        print(f"layer {i}: |mean|/rms {layer['mean_over_rms']:.3f}; busier expert's share of real tokens: median "
              f"{layer['median_busiest_share']:.3f}; over capacity: mean {layer['mean_over_capacity']:.4f}, >= 5 % "
              f"in {layer['p_over_5pct']:.1%} of routers, > 0 in {layer['p_over_0']:.1%}; the run's own router "
              f"(seed {result['run_seed']}): busier share {own / sum(layer['own_real']):.3f}, over capacity "
              f"{layer['own_over_capacity']:.4f}")
    worst = np.max([layer["over_per_router"] for layer in result["layers"].values()], axis=0)
    print(f"some EVF layer >= 5 % over capacity: {(worst >= 0.05).mean():.1%} of router draws")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
