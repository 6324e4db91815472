"""The elastic vision FFN (EVF) layer of stage 3: language FFN + vision FFN + linear router (DESIGN section 3).

Every token slot of the call competes for the two experts' buffers (T = B*S, padding never
competes); each expert's FFN runs on its [capacity, H] buffer only, gathered by
`dispatch_indices` and scattered back by `combine_indices`; a dropped token's output is
zero (the residual carries it).

Modes (`set_mode`; a graph compiled earlier keeps the mode it was compiled with):
- multimodal: router + token allocation with `evf_config.strategy`.
- language_only: the language FFN on every token, no router, no allocation: bit-identical
  to the dense FFN holding the same weights. Aux loss 0; stats count every valid token
  as kept by language.
- moe: the "MoE x2top1" ablation: top-1 routing by argmax P with gbpr priority (no
  modality prior, no redistribution); trainability of the FFNs is the trainer's choice.

Combine (`evf_config.combine`): `unit` outputs exactly the FFN output while the gradient of
P[x, expert] reaches the router (straight-through); `prob` multiplies it by P[x, expert].

Aux loss (paper): L_aux = sum_e F_e * G_e over valid tokens, F_e the fraction of valid
tokens in expert e's buffer after the final allocation (redistributed tokens count for
the expert that runs them), G_e the mean router probability of e (differentiable).

Capacity: `evf_config.capacity_factor` while the layer trains, `eval_capacity_factor`
otherwise (`set_train(False)`), as DeepSpeed's gate does; the default 2.0 gives each of the
two experts every token slot, so inference drops nothing and a sample's output does not
depend on what it is batched with. In graph mode the training flag is read when the graph
compiles: `set_train` on the cell that is called (its phase keys the compiled graph), or
before building the wrapper cell.

Precision: the `Router` cell (weights, logits, softmax, allocation, aux loss, statistics)
computes in float32 under every mixed-precision level: it refuses MindSpore's float16 /
bfloat16 cast flags, so `amp.auto_mixed_precision` at any level leaves it out. Half-precision
probabilities near 0.5 take few distinct values, so GBPR priorities would tie and ties go to
the lower token index: position would decide. Only the FFNs and the combine run in the
compute dtype.

Non-finite router probabilities (NaN / inf in a valid token's row) follow the reference
(`eve_ms.ops.token_allocation`): the token is dropped and counted, its output is zero, and
the aux loss becomes non-finite so the trainer reports the step.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer

from eve_ms.config import EVF_MODES, EVFConfig, LLMConfig
from eve_ms.models.ffn import FeedForward
from eve_ms.ops.allocator import allocate_tokens, combine_indices, dispatch_indices
from eve_ms.ops.token_allocation import LANGUAGE, NUM_EXPERTS, VISION, compute_capacity

# Per EVF layer: counts over all valid tokens, then the same counts over valid image tokens (text =
# all - image). "redistributed" counts tokens run by the expert they did not prefer (Img-GBPR's
# overflow offered to the other expert); dropped + redistributed is what overflowed its preferred
# expert's capacity.
ROUTING_STAT_NAMES = ("valid", "kept_language", "kept_vision", "dropped", "redistributed",
                      "image_valid", "image_kept_language", "image_kept_vision", "image_dropped",
                      "image_redistributed")
NUM_ROUTING_STATS = len(ROUTING_STAT_NAMES)
MOE_STRATEGY = "gbpr"  # plain top-1 routing: argmax P, priority P[x, pref], no prior


def check_evf_config(evf_config: EVFConfig) -> None:
    """Errors name the `evf` key at fault; the checks live with the fields (EVFConfig.validate)."""
    evf_config.validate()


class Router(nn.Cell):
    """The router and the token allocation of an EVF layer, in float32 whatever the mixed precision.

    construct(tokens [T, H], is_image [T] bool, valid [T] bool, noise [T] float32)
    -> (probs [T, 2] float32, expert [T] int32, slot [T] int32, aux_loss float32 scalar,
        stats [NUM_ROUTING_STATS] float32 in ROUTING_STAT_NAMES order).

    The image counts are computed here from the allocation's `expert` (every backend returns it),
    the preferred expert recomputed as the reference does (argmax of P, or of S = P + prior for
    img_gbpr, ties to expert 0).

    `weight` [2, H] gives expert e's logit in row e (DeepSpeed's `gate.wg`). The allocation
    backend (composed MindSpore ops or a native kernel) is chosen at build time from
    `evf_config.kernel` and the device target; a native kernel is built once per (T,
    strategy, capacity). `strategy` is the one in use (the EVF layer sets it from its mode).
    """

    def __init__(self, hidden_size: int, evf_config: EVFConfig):
        super().__init__()
        self.weight = Parameter(initializer(Normal(evf_config.router_init_std), [NUM_EXPERTS, hidden_size],
                                            ms.float32), name="weight")
        self.matmul = ops.MatMul(transpose_b=True)
        self.strategy = evf_config.strategy
        self.capacity_factor = float(evf_config.capacity_factor)
        self.eval_capacity_factor = float(evf_config.eval_capacity_factor)
        self.min_capacity = int(evf_config.min_capacity)
        self.beta = float(evf_config.beta)
        self.redistribute_ratio = float(evf_config.redistribute_ratio)
        from eve_ms.ops.kernels import KernelAllocation, select_backend  # evf.kernel: auto | composed | custom

        self.backend = select_backend(evf_config.kernel, ms.get_context("device_target"))
        # Native kernels fix T and the capacity as operator attributes: built at the first call
        # with that key (in graph mode: while the graph compiles).
        self._kernel_allocation = KernelAllocation
        self._kernel_allocators = {}
        self.to_float(ms.float32)

    def add_flags(self, **flags):
        """Mixed-precision flags other than float32 become float32: amp casts everything else, never the router."""
        if flags.get("fp16") or flags.get("bf16"):
            flags = dict(flags, fp16=False, bf16=False, fp32=True)
        return super().add_flags(**flags)

    def capacity(self, num_tokens: int) -> int:
        """Slots per expert buffer for `num_tokens` = B*S token slots, in the current train/eval state."""
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        return compute_capacity(num_tokens, factor, self.min_capacity)

    def probabilities(self, tokens):
        """softmax(W x) [T, 2] in float32."""
        return ops.softmax(self.matmul(tokens.astype(ms.float32), self.weight), -1)

    def _allocate(self, probs, is_image, valid, noise, capacity):
        num_tokens = probs.shape[0]
        if self.backend == "composed":
            return allocate_tokens(probs, is_image, valid, noise, strategy=self.strategy, capacity=capacity,
                                   beta=self.beta, redistribute_ratio=self.redistribute_ratio)
        key = (num_tokens, self.strategy, capacity)
        if key not in self._kernel_allocators:
            self._kernel_allocators[key] = self._kernel_allocation(self.backend, num_tokens, self.strategy, capacity,
                                                                   self.beta, self.redistribute_ratio)
        return self._kernel_allocators[key](probs, is_image, valid, noise)

    def construct(self, tokens, is_image, valid, noise):
        num_tokens = tokens.shape[0]
        probs = self.probabilities(tokens)
        expert, slot, counts = self._allocate(ops.stop_gradient(probs), is_image, valid, noise.astype(ms.float32),
                                              self.capacity(num_tokens))
        # sum_e F_e * G_e: F from the final allocation (constant), G = mean P over valid tokens (padding rows,
        # whatever they hold, are selected away rather than multiplied by zero)
        num_valid = valid.astype(ms.float32).sum()
        denominator = ops.maximum(num_valid, 1.0)
        fraction = counts[:NUM_EXPERTS].astype(ms.float32) / denominator
        valid_probs = ops.where(valid.reshape(num_tokens, 1), probs, ops.zeros_like(probs))
        aux_loss = (fraction * (valid_probs.sum(0) / denominator)).sum()
        stats = ops.concat((num_valid.reshape(1), counts.astype(ms.float32),
                            self.image_stats(probs, expert, is_image, valid)))
        return probs, expert, slot, aux_loss, stats

    def preferred_expert(self, probs, is_image):
        """argmax P, or argmax S = P + modality prior (img_gbpr), ties to expert 0; [T] int32."""
        if self.strategy == "img_gbpr":
            image = is_image.astype(ms.float32)
            beta = ms.Tensor(self.beta, ms.float32)
            first, second = probs[:, LANGUAGE] + (1.0 - image) * beta, probs[:, VISION] + image * beta
        else:
            first, second = probs[:, LANGUAGE], probs[:, VISION]
        return (second > first).astype(ms.int32)

    def image_stats(self, probs, expert, is_image, valid):
        """[5] float32: valid, kept_language, kept_vision, dropped, redistributed over valid image tokens."""
        image = ops.logical_and(is_image, valid)
        count = lambda mask: ops.logical_and(image, mask).astype(ms.float32).sum()  # noqa: E731
        total = image.astype(ms.float32).sum()
        language, vision = count(expert == LANGUAGE), count(expert == VISION)
        moved = count(ops.logical_and(expert >= 0, expert != self.preferred_expert(probs, is_image)))
        return ops.stack((total, language, vision, total - language - vision, moved))


class EVFLayer(nn.Cell):
    """construct(x [B,S,H], is_image [B,S] bool, valid [B,S] bool, noise [B,S] float32 in [0,1))
    -> (y [B,S,H], aux_loss float32 scalar, stats [NUM_ROUTING_STATS] float32 in ROUTING_STAT_NAMES order).

    Composed ops take the capacity from x's static shape, so any B*S works.
    """

    def __init__(self, llm_config: LLMConfig, evf_config: EVFConfig, ffn_kind: str = "swiglu", fused=None):
        super().__init__()
        check_evf_config(evf_config)
        # both experts have the FFN kind of the layer they replace (swiglu | series): the vision FFN is its copy;
        # `fused` (eve_ms.ops.fused.FusedOps, default: from llm_config) picks their SwiGLU kernel, which
        # run on the static [capacity, H] expert buffers like the composed ones
        self.language_ffn = FeedForward(llm_config, ffn_kind, fused)
        self.vision_ffn = FeedForward(llm_config, ffn_kind, fused)
        self.router = Router(llm_config.hidden_size, evf_config)
        self.strategy = evf_config.strategy
        self.combine = evf_config.combine
        self.set_mode(evf_config.mode)

    @property
    def backend(self) -> str:
        return self.router.backend

    def set_mode(self, mode: str) -> None:
        """'multimodal' | 'language_only' | 'moe'. In graph mode, set it before the graph is compiled."""
        if mode not in EVF_MODES:
            raise ValueError(f"EVF mode must be one of {EVF_MODES}, got {mode!r}")
        self.mode = mode
        self.router.strategy = MOE_STRATEGY if mode == "moe" else self.strategy

    def capacity(self, num_tokens: int) -> int:
        """Slots per expert buffer for a call with `num_tokens` = B*S token slots, in the current train/eval state."""
        return self.router.capacity(num_tokens)

    def construct(self, x, is_image, valid, noise):
        batch, seq, hidden = x.shape
        num_tokens = batch * seq
        valid = valid.reshape(num_tokens)
        if self.mode == "language_only":
            num_valid = valid.astype(ms.float32).sum()
            num_image = ops.logical_and(is_image.reshape(num_tokens), valid).astype(ms.float32).sum()
            zero = ops.zeros((), ms.float32)
            stats = ops.stack((num_valid, num_valid, zero, zero, zero, num_image, num_image, zero, zero, zero))
            return self.language_ffn(x), zero, stats

        capacity = self.capacity(num_tokens)
        tokens = x.reshape(num_tokens, hidden)
        probs, expert, slot, aux_loss, stats = self.router(tokens, is_image.reshape(num_tokens), valid,
                                                           noise.reshape(num_tokens))

        # Expert buffers: slot s of expert e holds token dispatch[e, s]; empty slots read the zero row.
        dispatch = dispatch_indices(expert, slot, capacity)
        padded = ops.concat((tokens, ops.zeros((1, hidden), tokens.dtype)))
        language_out = self.language_ffn(ops.gather(padded, dispatch[LANGUAGE], 0))
        vision_out = self.vision_ffn(ops.gather(padded, dispatch[VISION], 0))
        rows = ops.concat((language_out, vision_out, ops.zeros((1, hidden), language_out.dtype)))
        out = ops.gather(rows, combine_indices(expert, slot, capacity), 0)

        # P[x, expert]; 0 for dropped and padding rows, selected rather than multiplied so that a NaN row stays 0
        language_p, vision_p = probs[:, LANGUAGE], probs[:, VISION]
        gate = ops.where(expert == VISION, vision_p,
                         ops.where(expert == LANGUAGE, language_p, ops.zeros_like(language_p)))
        if self.combine == "unit":
            # value exactly `out` (gate - gate == 0 exactly), gradient of `gate` as for out * gate; `out`'s own
            # gradient passes unchanged (stop_gradient spares the backward pass a [T, H] product with zero)
            straight_through = (gate - ops.stop_gradient(gate)).astype(out.dtype).reshape(num_tokens, 1)
            out = out + ops.stop_gradient(out) * straight_through
        else:
            out = out * gate.astype(out.dtype).reshape(num_tokens, 1)
        return out.reshape(batch, seq, hidden), aux_loss, stats
