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
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Normal

from eve_ms.config import ConfigError, EVFConfig, LLMConfig
from eve_ms.models.ffn import FeedForward
from eve_ms.ops.allocator import allocate_tokens, check_allocation_args, combine_indices, dispatch_indices
from eve_ms.ops.token_allocation import NUM_EXPERTS, compute_capacity

EVF_MODES = ("multimodal", "language_only", "moe")
COMBINES = ("unit", "prob")
ROUTING_STAT_NAMES = ("valid", "kept_language", "kept_vision", "dropped", "redistributed")
NUM_ROUTING_STATS = len(ROUTING_STAT_NAMES)
MOE_STRATEGY = "gbpr"  # plain top-1 routing: argmax P, priority P[x, pref], no prior
ROUTER_INIT_STD = 0.02


def check_evf_config(evf_config: EVFConfig) -> None:
    """Errors name the `evf` key at fault."""
    if evf_config.mode not in EVF_MODES:
        raise ConfigError(f"evf.mode must be one of {EVF_MODES}, got {evf_config.mode!r}")
    if evf_config.combine not in COMBINES:
        raise ConfigError(f"evf.combine must be one of {COMBINES}, got {evf_config.combine!r}")
    if evf_config.capacity_factor <= 0:
        raise ConfigError(f"evf.capacity_factor must be > 0, got {evf_config.capacity_factor}")
    if evf_config.min_capacity < 0:
        raise ConfigError(f"evf.min_capacity must be >= 0, got {evf_config.min_capacity}")
    try:
        check_allocation_args(evf_config.strategy, evf_config.beta, evf_config.redistribute_ratio)
    except ValueError as err:
        raise ConfigError(f"evf: {err}") from err


class EVFLayer(nn.Cell):
    """construct(x [B,S,H], is_image [B,S] bool, valid [B,S] bool, noise [B,S] float32 in [0,1))
    -> (y [B,S,H], aux_loss float32 scalar, stats [NUM_ROUTING_STATS] float32 in ROUTING_STAT_NAMES order).

    The allocation backend (composed MindSpore ops or a native kernel) is chosen at build
    time from `evf_config.kernel` and the device target. Composed ops take the capacity from
    x's static shape, so any B*S works; a native kernel is built once per distinct B*S.
    """

    def __init__(self, llm_config: LLMConfig, evf_config: EVFConfig, ffn_kind: str = "swiglu"):
        super().__init__()
        check_evf_config(evf_config)
        # both experts have the FFN kind of the layer they replace (swiglu | series): the vision FFN is its copy
        self.language_ffn = FeedForward(llm_config, ffn_kind)
        self.vision_ffn = FeedForward(llm_config, ffn_kind)
        self.router = nn.Dense(llm_config.hidden_size, NUM_EXPERTS, has_bias=False,
                               weight_init=Normal(ROUTER_INIT_STD), dtype=ms.float32)
        self.mode = evf_config.mode
        self.strategy = evf_config.strategy
        self.combine = evf_config.combine
        self.capacity_factor = float(evf_config.capacity_factor)
        self.min_capacity = int(evf_config.min_capacity)
        self.beta = float(evf_config.beta)
        self.redistribute_ratio = float(evf_config.redistribute_ratio)
        from eve_ms.ops.kernels import KernelAllocation, select_backend  # evf.kernel: auto | composed | custom

        self.backend = select_backend(evf_config.kernel, ms.get_context("device_target"))
        # Native kernels fix T as an operator attribute: one KernelAllocation per (T, strategy),
        # built at the first call with that T (in graph mode: while the graph compiles).
        self._kernel_allocation = KernelAllocation
        self._kernel_allocators = {}

    def set_mode(self, mode: str) -> None:
        """'multimodal' | 'language_only' | 'moe'. In graph mode, set it before the graph is compiled."""
        if mode not in EVF_MODES:
            raise ValueError(f"EVF mode must be one of {EVF_MODES}, got {mode!r}")
        self.mode = mode

    def capacity(self, num_tokens: int) -> int:
        """Slots per expert buffer for a call with `num_tokens` = B*S token slots."""
        return compute_capacity(num_tokens, self.capacity_factor, self.min_capacity)

    def _kernel_allocator(self, num_tokens, strategy):
        key = (num_tokens, strategy)
        if key not in self._kernel_allocators:
            self._kernel_allocators[key] = self._kernel_allocation(self.backend, num_tokens, strategy,
                                                                   self.capacity(num_tokens), self.beta,
                                                                   self.redistribute_ratio)
        return self._kernel_allocators[key]

    def _allocate(self, probs, is_image, valid, noise, strategy):
        num_tokens = probs.shape[0]
        if self.backend == "composed":
            return allocate_tokens(probs, is_image, valid, noise, strategy=strategy,
                                   capacity=self.capacity(num_tokens), beta=self.beta,
                                   redistribute_ratio=self.redistribute_ratio)
        return self._kernel_allocator(num_tokens, strategy)(probs, is_image, valid, noise)

    def construct(self, x, is_image, valid, noise):
        batch, seq, hidden = x.shape
        num_tokens = batch * seq
        valid = valid.reshape(num_tokens)
        num_valid = valid.astype(ms.float32).sum()
        if self.mode == "language_only":
            zero = ops.zeros((), ms.float32)
            stats = ops.stack((num_valid, num_valid, zero, zero, zero))
            return self.language_ffn(x), zero, stats

        strategy = MOE_STRATEGY if self.mode == "moe" else self.strategy
        capacity = self.capacity(num_tokens)
        tokens = x.reshape(num_tokens, hidden)
        probs = ops.softmax(self.router(tokens.astype(ms.float32)), -1)
        expert, slot, counts = self._allocate(ops.stop_gradient(probs), is_image.reshape(num_tokens), valid,
                                              noise.reshape(num_tokens).astype(ms.float32), strategy)

        # Expert buffers: slot s of expert e holds token dispatch[e, s]; empty slots read the zero row.
        dispatch = dispatch_indices(expert, slot, capacity)
        padded = ops.concat((tokens, ops.zeros((1, hidden), tokens.dtype)))
        language_out = self.language_ffn(ops.gather(padded, dispatch[0], 0))
        vision_out = self.vision_ffn(ops.gather(padded, dispatch[1], 0))
        rows = ops.concat((language_out, vision_out, ops.zeros((1, hidden), language_out.dtype)))
        out = ops.gather(rows, combine_indices(expert, slot, capacity), 0)

        gate = ops.where(expert == 1, probs[:, 1], probs[:, 0])  # P[x, expert]; dropped rows are 0 anyway
        if self.combine == "unit":
            # value exactly `out` (gate - gate == 0 exactly), gradient of `gate` as for out * gate; `out`'s own
            # gradient passes unchanged (stop_gradient spares the backward pass a [T, H] product with zero)
            straight_through = (gate - ops.stop_gradient(gate)).astype(out.dtype).reshape(num_tokens, 1)
            out = out + ops.stop_gradient(out) * straight_through
        else:
            out = out * gate.astype(out.dtype).reshape(num_tokens, 1)

        aux_loss = self._aux_loss(probs, counts, valid, num_valid)
        stats = ops.concat((num_valid.reshape(1), counts.astype(ms.float32)))
        return out.reshape(batch, seq, hidden), aux_loss, stats

    @staticmethod
    def _aux_loss(probs, counts, valid, num_valid):
        """sum_e F_e * G_e; F from the final allocation (constant), G = mean P over valid tokens."""
        denominator = ops.maximum(num_valid, 1.0)
        fraction = counts[:NUM_EXPERTS].astype(ms.float32) / denominator
        mean_prob = (probs * valid.astype(ms.float32).reshape(-1, 1)).sum(0) / denominator
        return (fraction * mean_prob).sum()
