"""Would a fresh router overflow its capacity on a *pretrained* LM's hidden states? A llama2.c checkpoint, measured.

    python tools/pretrained_geometry.py --checkpoint stories260K.bin [--stories 12] [--tokens 200] [--routers 1000]

The demo's `capacity_binds` depends on the geometry of the EVF layers' inputs (tools/router_overflow.py): a
random router overflows an expert only when the tokens' mean lies far from the origin relative to their spread.
The demo's stand-in LLM is trained on this machine in a minute; this tool asks the same question of an LM that
was pretrained for real, at the stand-in's scale: a llama2.c checkpoint (karpathy/tinyllamas; stories260K has
the stand-in's width 64 and vocabulary 512 and was trained for 100k steps of 128 x 512 TinyStories tokens).
The checkpoint is loaded into transformers' LlamaForCausalLM (llama2.c rotates interleaved pairs of a head's
query/key features; transformers rotates its two halves, so the rows of wq and wk are permuted within each head).
The tool samples `--stories` sequences from the model itself (no tokenizer needed: the model's own text), takes
every layer's FFN input (the post-attention RMSNorm output, what an EVF router reads), and prints per layer
|mean|/rms and, for `--routers` random routers, the busier expert's share and the share over capacity with C=1.5,
each story a micro-batch of its own (as the Eve release's stage 3, one sample per device). Nothing is written.
"""
from __future__ import annotations

import argparse
import math
import os
import struct
import sys

import numpy as np

TOOLS = os.path.dirname(os.path.abspath(__file__))
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

from router_overflow import mean_over_rms, random_router_split  # noqa: E402

HEADER = struct.Struct("7i")  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (< 0: untied), seq_len


def read_llama2c(path: str) -> tuple:
    """(config dict, {name: float32 array}) of a llama2.c checkpoint (the legacy 'version 0' layout of run.c)."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < HEADER.size:
        raise ValueError(f"{path}: {len(raw)} bytes, shorter than a llama2.c header")
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = HEADER.unpack_from(raw)
    if min(dim, hidden, layers, heads, kv_heads, seq_len) <= 0 or dim % heads or heads % kv_heads:
        raise ValueError(f"{path}: not a llama2.c checkpoint (header {HEADER.unpack_from(raw)})")
    tied, vocab = vocab > 0, abs(vocab)
    head_size, kv_dim = dim // heads, dim // heads * kv_heads
    shapes = [("embed", (vocab, dim)), ("attention_norm", (layers, dim)), ("wq", (layers, dim, dim)),
              ("wk", (layers, kv_dim, dim)), ("wv", (layers, kv_dim, dim)), ("wo", (layers, dim, dim)),
              ("ffn_norm", (layers, dim)), ("w1", (layers, hidden, dim)), ("w2", (layers, dim, hidden)),
              ("w3", (layers, hidden, dim)), ("final_norm", (dim,)), ("rope_tables", (2, seq_len, head_size // 2))]
    if not tied:
        shapes.append(("lm_head", (vocab, dim)))
    values = np.frombuffer(raw, np.float32, offset=HEADER.size)
    expected = sum(math.prod(shape) for _, shape in shapes)
    if values.size != expected:
        raise ValueError(f"{path}: {values.size} floats after the header, the header's shapes need {expected}")
    weights, offset = {}, 0
    for name, shape in shapes:
        weights[name] = values[offset:offset + math.prod(shape)].reshape(shape)
        offset += math.prod(shape)
    if tied:
        weights["lm_head"] = weights["embed"]
    config = dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, vocab=vocab,
                  seq_len=seq_len, tied=tied)
    return config, weights


def _halves_first(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a query/key projection from llama2.c's interleaved rotary pairs (2i, 2i+1) to transformers'
    halves (i, i + head_size / 2), head by head."""
    out, head_size = w.shape[0], w.shape[0] // heads
    order = np.concatenate([np.arange(0, head_size, 2), np.arange(1, head_size, 2)])
    return w.reshape(heads, head_size, -1)[:, order].reshape(out, -1)


def to_transformers(config: dict, weights: dict):
    """transformers' LlamaForCausalLM (float32, eval mode) holding a llama2.c checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(vocab_size=config["vocab"], hidden_size=config["dim"], intermediate_size=config["hidden"],
                     num_hidden_layers=config["layers"], num_attention_heads=config["heads"],
                     num_key_value_heads=config["kv_heads"], max_position_embeddings=config["seq_len"],
                     rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=config["tied"],
                     attention_bias=False, mlp_bias=False)
    model = LlamaForCausalLM(hf).eval()
    state = {"model.embed_tokens.weight": weights["embed"], "model.norm.weight": weights["final_norm"],
             "lm_head.weight": weights["lm_head"]}
    for i in range(config["layers"]):
        prefix = f"model.layers.{i}."
        state.update({
            prefix + "input_layernorm.weight": weights["attention_norm"][i],
            prefix + "post_attention_layernorm.weight": weights["ffn_norm"][i],
            prefix + "self_attn.q_proj.weight": _halves_first(weights["wq"][i], config["heads"]),
            prefix + "self_attn.k_proj.weight": _halves_first(weights["wk"][i], config["kv_heads"]),
            prefix + "self_attn.v_proj.weight": weights["wv"][i],
            prefix + "self_attn.o_proj.weight": weights["wo"][i],
            prefix + "mlp.gate_proj.weight": weights["w1"][i],
            prefix + "mlp.down_proj.weight": weights["w2"][i],
            prefix + "mlp.up_proj.weight": weights["w3"][i],
        })
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                                                strict=False)
    # tied checkpoints: lm_head.weight is the embedding, which transformers reports either way
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"llama2.c -> transformers: missing {missing}, unexpected {unexpected}")
    return model


def ffn_inputs(model, tokens) -> list:
    """Per decoder layer, its post-attention RMSNorm output (the FFN input) for a batch of equally long token
    sequences (stories x positions x width), as float64."""
    import torch

    captured = []
    hooks = [layer.post_attention_layernorm.register_forward_hook(
        lambda module, args, output: captured.append(output.double().numpy()))
        for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(torch.as_tensor(tokens))
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def measure(path: str, stories: int = 12, tokens: int = 200, routers: int = 1000, capacity_factor: float = 1.5,
            seed: int = 0, bos: int = 1) -> dict:
    """Per layer: |mean|/rms of the FFN inputs over every story, the busier expert's share of random routers
    (median) and the share over capacity (each story a micro-batch: ceil(C T / 2) slots per expert)."""
    import torch

    config, weights = read_llama2c(path)
    model = to_transformers(config, weights)
    torch.manual_seed(seed)
    with torch.no_grad():
        samples = model.generate(torch.full((stories, 1), bos), do_sample=True, temperature=1.0, top_k=0,
                                 max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0, eos_token_id=None)
    per_layer = ffn_inputs(model, samples)  # every story has the same length: one batch, no padding
    rng = np.random.default_rng(seed)
    layers = []
    for inputs in per_layer:
        # the BOS position is left out: llama-style LMs park attention and large activations there
        xs = list(inputs[:, 1:])
        busiest, over = zip(*(random_router_split(x, math.ceil(capacity_factor * len(x) / 2), routers, rng)
                              for x in xs))
        over = np.mean(over, axis=0)  # per router, the share over capacity summed over the stories
        layers.append({"mean_over_rms": mean_over_rms(np.concatenate(xs)),
                       "median_busiest_share": float(np.median(np.concatenate(busiest))),
                       "mean_over_capacity": float(over.mean()), "p_over_5pct": float((over >= 0.05).mean())})
    return {"config": config, "stories": stories, "tokens": tokens, "routers": routers,
            "capacity_factor": capacity_factor, "layers": layers}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a llama2.c .bin checkpoint (e.g. stories260K.bin)")
    parser.add_argument("--stories", type=int, default=12, help="sequences sampled from the model")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per sequence after BOS")
    parser.add_argument("--routers", type=int, default=1000, help="random routers drawn per layer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = measure(args.checkpoint, args.stories, args.tokens, args.routers, seed=args.seed)
    print(f"{args.checkpoint}: {result['config']}; {args.stories} sampled sequences of {args.tokens} tokens, "
          f"{args.routers} random routers, C = {result['capacity_factor']}, each sequence a micro-batch")
    for i, layer in enumerate(result["layers"]):
        print(f"layer {i}: |mean|/rms {layer['mean_over_rms']:.3f}; busier expert's share: median "
              f"{layer['median_busiest_share']:.3f}; over capacity: mean {layer['mean_over_capacity']:.4f}, "
              f">= 5 % in {layer['p_over_5pct']:.1%} of routers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
