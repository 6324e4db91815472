"""One micro-batch of a training step, block by block: FLOPs forward and backward, and what stays saved.

A block is a piece of the network in forward order: the frozen vision tower's layers, the adapter,
then per decoder layer its attention block and its FFN block (dense or EVF), then lm_head + loss.
For each block:

- forward FLOPs: 2 x rows x fan_in x fan_out per matrix product (LoRA's two factors included), plus
  the attention core 4 x B x heads x S^2 x head_dim (scores and weighted values over the full S x S
  matrix, as the composed attention computes it);
- backward FLOPs: a weight gradient (dW, same as forward) for each trainable weight, an input gradient
  (dX) where the gradient must travel on to something trainable earlier in the network, and 2x the
  core's forward for the attention core when the gradient passes through it. Nothing trainable
  below a block and nothing trainable in it: no backward at all (the vision tower always; stage 3's
  layers below the first EVF layer);
- saved bytes: the tensors the backward pass reads, by what each op's gradient needs (a matmul's input
  only for its dW, a softmax its output, RMSNorm its float32 input, ...), in the compute dtype, with
  float32 where the model computes in float32 (RMSNorm, the attention softmax, the router, the loss);
- working bytes: the largest set of temporaries alive inside the block (attention scores and their
  gradient), which the peak adds once, for the block that needs most.

Recompute (MindSpore `Cell.recompute()` on the first N decoder layers): such a layer keeps only its
input between forward and backward, and runs its forward again in the backward pass (FLOPs of the
blocks whose backward runs, once more); its saved set becomes working memory while it is recomputed.
"""
from __future__ import annotations

from dataclasses import dataclass

from eve_ms.ops.token_allocation import compute_capacity
from eve_ms.plan.inventory import Dense, llm_layer_denses
from eve_ms.plan.stage import StageSpec

F32 = 4
ATTENTION_ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "attn_linear")


def _in_attention(dense: Dense) -> bool:
    return dense.role.split(".")[0] in ATTENTION_ROLES


@dataclass
class Block:
    name: str
    layer: int  # decoder layer index; -1 outside the decoder
    forward: float = 0.0
    backward_dx: float = 0.0
    backward_dw: float = 0.0
    saved: float = 0.0  # bytes kept from forward to backward
    working: float = 0.0  # bytes of temporaries while the block runs (forward or backward)
    backward_runs: bool = False

    @property
    def backward(self) -> float:
        return self.backward_dx + self.backward_dw


def _matmul(block: Block, rows: int, dense: Dense, trains: bool, dx: bool, spec: StageSpec, lora: bool) -> None:
    """Add one nn.Dense (and its LoRA factors) applied to `rows` rows. The input a weight gradient reads is
    added by the caller (layers that share one input, q/k/v or gate/up, keep it once)."""
    e = spec.bytes_per_element
    flops = 2.0 * rows * dense.fan_in * dense.fan_out
    block.forward += flops
    if trains:
        block.backward_dw += flops
    if dx:
        block.backward_dx += flops
    if lora:
        r = spec.lora_rank
        lora_flops = 2.0 * rows * r * (dense.fan_in + dense.fan_out)
        block.forward += lora_flops
        block.backward_dw += lora_flops
        if dx:
            block.backward_dx += lora_flops
        # dropout mask (1 byte) + dropped input (lora_a's dW) + lora_a output (lora_b's dW)
        block.saved += rows * dense.fan_in * ((1 + e) if spec.lora_dropout > 0 else e) + rows * r * e


class StepModel:
    """Blocks of one micro-batch of `spec` (see the module docstring); `blocks` in forward order."""

    def __init__(self, spec: StageSpec):
        self.spec = spec
        model = spec.model
        self.tokens = spec.micro_batch * spec.seq_len
        self.evf_layers = set(model.evf.layer_indices(model.llm.num_layers))
        self.capacity = (compute_capacity(self.tokens, model.evf.capacity_factor, model.evf.min_capacity)
                         if self.evf_layers else 0)
        self.first_trainable = self._first_trainable()
        self.blocks: list[Block] = []
        self._vision()
        self._adapter()
        self._decoder()
        self._head()

    # ----------------------------------------------------------------- what is trainable where

    def _first_trainable(self) -> tuple:
        """(layer, 0 attention | 1 FFN) of the first decoder block with a trainable weight; (-1, 0) when the
        adapter or the embeddings train; (num_layers, 0) when nothing in the decoder does."""
        spec, llm = self.spec, self.spec.model.llm
        if spec.adapter_trains or spec.llm_norms_and_embeddings_train:
            return (-1, 0)
        for i in range(llm.num_layers):
            for dense in llm_layer_denses(llm, i, self.evf_layers):
                if spec.dense_trains(dense) or spec.lora_applies(dense):
                    return (i, 0 if _in_attention(dense) else 1)
        return (llm.num_layers, 0)

    def _trainable_before(self, layer: int, ffn: bool) -> bool:
        """Whether a weight before this block trains (adapter, embeddings, earlier layers, this layer's attention)."""
        return self.first_trainable < (layer, 1 if ffn else 0)

    # ----------------------------------------------------------------- blocks

    def _vision(self) -> None:
        v, b, e = self.spec.model.vision, self.spec.micro_batch, self.spec.bytes_per_element
        n = v.num_tokens
        rows = b * n
        embed = Block("vision.embeddings", -1, forward=2.0 * rows * v.num_channels * v.patch_size**2 * v.hidden_size)
        self.blocks.append(embed)
        head_dim = v.hidden_size // v.num_heads
        for i in range(v.layers_used):
            blk = Block(f"vision.layer{i}", -1)
            blk.forward = 2.0 * rows * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size)
            blk.forward += 4.0 * b * v.num_heads * n * n * head_dim
            blk.working = b * v.num_heads * n * n * (F32 + e) + 2 * rows * v.intermediate_size * e
            self.blocks.append(blk)

    def _adapter(self) -> None:
        spec, model = self.spec, self.spec.model
        b, e, h = spec.micro_batch, spec.bytes_per_element, model.llm.hidden_size
        grid = model.vision.grid_size
        rows_in = b * grid * grid
        trains = spec.adapter_trains
        blk = Block("adapter", -1, backward_runs=trains)
        fc1 = Dense("adapter", -1, "mlp.fc1", model.vision.feature_dim, h, True)
        fc2 = Dense("adapter", -1, "mlp.fc2", h, h, True)
        _matmul(blk, rows_in, fc1, trains, False, spec, False)
        _matmul(blk, rows_in, fc2, trains, trains, spec, False)
        if trains:  # fc1's input, GELU's input, fc2's input
            blk.saved += rows_in * (model.vision.feature_dim + 2 * h) * e
        if model.adapter.type == "ldp":
            rows_out = b * model.num_image_tokens
            for rows, name in ((rows_in, "blocks.0"), (rows_out, "blocks.1")):
                proj = Dense("adapter", -1, f"{name}.project", h, h, True)
                _matmul(blk, rows, proj, trains, trains, spec, False)
                if trains:  # depthwise conv in, its LayerNorm in, activation in, SE in, project in, its LayerNorm in
                    blk.saved += 6 * rows * h * e
        blk.working = 2 * rows_in * h * e
        self.blocks.append(blk)

    def _decoder(self) -> None:
        spec, llm = self.spec, self.spec.model.llm
        for i in range(llm.num_layers):
            denses = llm_layer_denses(llm, i, self.evf_layers)
            attn = [d for d in denses if _in_attention(d)]
            ffn = [d for d in denses if d not in attn]
            self.blocks.append(self._attention_block(i, attn))
            self.blocks.append(self._ffn_block(i, ffn))

    def _attention_block(self, i: int, denses: list) -> Block:
        spec, llm = self.spec, self.spec.model.llm
        t, e, h, b, s = self.tokens, spec.bytes_per_element, llm.hidden_size, spec.micro_batch, spec.seq_len
        below = self._trainable_before(i, ffn=False)
        inside = any(spec.dense_trains(d) or spec.lora_applies(d) for d in denses)
        runs = below or inside
        blk = Block(f"layer{i}.attention", i, backward_runs=runs)
        heads, d = llm.num_heads, llm.dim_per_head
        first = ("q_proj", "k_proj", "v_proj")
        for dense in denses:
            trains, lora = spec.dense_trains(dense), spec.lora_applies(dense)
            dx = below or (runs and dense.role not in first)
            _matmul(blk, t, dense, trains, dx, spec, lora)
            if trains and dense.role not in first[1:]:  # q/k/v share one input: kept once
                blk.saved += t * dense.fan_in * e
        core = 4.0 * b * heads * s * s * d
        blk.forward += core
        scores = b * heads * s * s
        fused = spec.fused_attention
        # composed: float32 scores + mask, then the probabilities; fused (flash attention): tiles only
        blk.working = 0.0 if fused else scores * (F32 + e)
        if runs:
            # the fused backward recomputes the scores tile by tile: 5 S x S products against 4 in forward
            blk.backward_dx += (2.5 if fused else 2.0) * core
            blk.saved += t * h * F32  # RMSNorm's float32 input
            if fused:  # q, k, v as given (grouped heads), the output and the softmax's log-sum-exp
                blk.saved += t * (2 * heads + 2 * llm.kv_heads) * d * e + b * heads * s * F32
            else:  # scaled q, k and v repeated to every query head, the float32 softmax output (+ its cast)
                blk.saved += 3 * t * heads * d * e + scores * (F32 + (e if e != F32 else 0))
                blk.working += 2 * scores * F32  # gradients of the probabilities and of the scores
            width = llm.attn_shortcut_width_of(i)
            if width:
                blk.saved += t * width * e  # FastGeLU's input
        return blk

    def _ffn_block(self, i: int, denses: list) -> Block:
        spec, llm = self.spec, self.spec.model.llm
        t, e, h, inner = self.tokens, spec.bytes_per_element, llm.hidden_size, llm.intermediate_size
        below = self._trainable_before(i, ffn=True)
        gates = 2 if llm.ffn_kind(i) == "series" else 1
        blk = Block(f"layer{i}.ffn", i)
        experts = {}
        for dense in denses:
            experts.setdefault(dense.expert if dense.role != "router" else "router", []).append(dense)
        for expert, members in experts.items():
            trains_any = any(spec.dense_trains(d) or spec.lora_applies(d) for d in members)
            runs = below or trains_any
            blk.backward_runs |= runs
            rows = t if expert in ("", "router") else self.capacity
            for dense in members:
                trains, lora = spec.dense_trains(dense), spec.lora_applies(dense)
                dx = below or (runs and dense.role.endswith("down_proj"))
                _matmul(blk, rows, dense, trains, dx, spec, lora)
                if trains and dense.role.endswith("down_proj"):
                    blk.saved += rows * dense.fan_in * e  # down's input, for its weight gradient
            if expert == "router":
                if runs:
                    blk.saved += t * h * F32 + 4 * t * F32  # float32 router input, probabilities, gate
                continue
            if any(spec.dense_trains(d) for d in members if not d.role.endswith("down_proj")):
                blk.saved += rows * h * e  # the (gathered) FFN input, read by the gate/up weight gradients
            if runs:
                blk.saved += (4 + gates - 1) * rows * inner * e  # gate(s), sigmoid, activation, up
        if blk.backward_runs:
            blk.saved += t * h * F32  # RMSNorm's float32 input
            if self.evf_layers and i in self.evf_layers:
                blk.saved += t * h * e  # the straight-through combine's detached output
        blk.working = 2 * max(t, 2 * self.capacity) * inner * e
        return blk

    def _head(self) -> None:
        spec, llm = self.spec, self.spec.model.llm
        t, e = self.tokens, spec.bytes_per_element
        blk = Block("lm_head+loss", -1, backward_runs=True)
        if not llm.tie_word_embeddings:
            dense = Dense("lm_head", -1, "lm_head", llm.hidden_size, llm.vocab_size)
            _matmul(blk, t, dense, spec.dense_trains(dense), True, spec, False)
            if spec.dense_trains(dense):
                blk.saved += t * llm.hidden_size * e
        else:
            blk.forward += 2.0 * t * llm.hidden_size * llm.vocab_size
            blk.backward_dx += 2.0 * t * llm.hidden_size * llm.vocab_size
        blk.saved += t * llm.hidden_size * F32  # the final RMSNorm's float32 input
        # logits (compute dtype) and float32 log-softmax kept for the loss's backward, its float32 gradient
        self.logits_bytes = t * llm.vocab_size * (e + 2 * F32)
        blk.working = 0.0
        self.blocks.append(blk)

    # ----------------------------------------------------------------- totals

    def layer_blocks(self, layer: int) -> list:
        return [b for b in self.blocks if b.layer == layer]

    def recomputed(self, layer: int) -> bool:
        return layer >= 0 and layer < self.spec.recompute_layers

    @property
    def forward_flops(self) -> float:
        return sum(b.forward for b in self.blocks)

    @property
    def backward_flops(self) -> float:
        return sum(b.backward for b in self.blocks)

    @property
    def recompute_flops(self) -> float:
        return sum(b.forward for b in self.blocks if self.recomputed(b.layer) and b.backward_runs)

    def activation_bytes_per_layer(self, layer: int) -> float:
        """Saved bytes of decoder layer `layer` without recompute."""
        return sum(b.saved for b in self.layer_blocks(layer))

    def layer_input_bytes(self) -> float:
        return self.tokens * self.spec.model.llm.hidden_size * self.spec.bytes_per_element

    def saved_bytes(self) -> dict:
        """Saved activations by part: vision/adapter, decoder layers (recompute applied), lm_head."""
        llm = self.spec.model.llm
        decoder = 0.0
        for i in range(llm.num_layers):
            full = self.activation_bytes_per_layer(i)
            runs = any(b.backward_runs for b in self.layer_blocks(i))
            decoder += (self.layer_input_bytes() if runs else 0.0) if self.recomputed(i) else full
        other = sum(b.saved for b in self.blocks if b.layer < 0)
        return {"adapter_and_head": other, "decoder_layers": decoder}

    def working_bytes(self) -> float:
        """The largest temporary set: a block's own, or a recomputed layer's saved set while it is rebuilt."""
        largest = max(b.working for b in self.blocks)
        rebuilt = max((self.activation_bytes_per_layer(i) for i in range(self.spec.model.llm.num_layers)
                       if self.recomputed(i)), default=0.0)
        return largest + rebuilt
