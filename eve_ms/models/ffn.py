"""The feed-forward block of a decoder layer (the dense FFN and both experts of an EVF layer), by kind.

- `swiglu` (Llama): down(silu(gate(x)) * up(x)).
- `series` (PanGu-pi's series-informed activation, as the Eve release's `InternLMMLPVanilla` builds it):
  down((silu(gate(x)) + fast_gelu(gate2(x))) * up(x)), a second gate projection `gate_proj2`.

`fast_gelu(x) = x * sigmoid(1.702 |x|) * exp(0.851 (x - |x|))` is MindSpore's own FastGeLU (PanGu-pi was
trained in MindSpore; the release re-implements it in PyTorch), so the op is used as it is. Written out,
it is x * sigmoid(1.702 x) for every x: the |x| form only keeps exp from overflowing. It is
MindSpore's fused FastGeLU kernel on Ascend already, so `llm.fused_ops` leaves it as it is.

With `fused.swiglu` (Ascend) the `swiglu` kind runs `ops.swiglu` on [gate | up] (first half
through SiLU, as the operator splits it), one concatenation of the two projections' outputs; the two
`nn.Dense` projections stay, so Hugging Face names and MindFormers' LoRA (which replaces nn.Dense) are
untouched. The `series` kind has no fused operator (eve_ms/ops/fused.py says why).
"""
from __future__ import annotations

from mindspore import nn, ops

from eve_ms.config import FFN_KINDS, LLMConfig
from eve_ms.ops.fused import FusedOps, select_fused_ops


class FeedForward(nn.Cell):
    """The FFN of kind `kind`; weight names match Hugging Face Llama's `mlp` (+ `gate_proj2` for `series`).

    Linear layers are `nn.Dense` because MindFormers' LoRA replaces exactly that type.
    """

    def __init__(self, config: LLMConfig, kind: str = "swiglu", fused: FusedOps | None = None):
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {config.hidden_act!r} for the FFN (supported: silu)")
        if kind not in FFN_KINDS:
            raise ValueError(f"unknown FFN kind {kind!r} (supported: {', '.join(FFN_KINDS)})")
        h, i, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.kind = kind
        self.gate_proj = nn.Dense(h, i, has_bias=bias)
        if kind == "series":
            self.gate_proj2 = nn.Dense(h, i, has_bias=bias)
        self.up_proj = nn.Dense(h, i, has_bias=bias)
        self.down_proj = nn.Dense(i, h, has_bias=bias)
        fused = fused if fused is not None else select_fused_ops(config)
        self.fused_swiglu = fused.swiglu

    def construct(self, x):
        gate = self.gate_proj(x)
        if self.kind == "swiglu" and self.fused_swiglu:
            return self.down_proj(ops.swiglu(ops.cat((gate, self.up_proj(x)), -1), -1))
        # silu written out: MindSpore's CPU SiLU and SiLUGrad expand to more passes (9.4 vs 11.6 ms fwd+bwd
        # at 512 x 1728); the sigmoid is kept for the backward pass either way
        activated = gate * ops.sigmoid(gate)
        if self.kind == "series":
            activated = activated + ops.fast_gelu(self.gate_proj2(x))
        return self.down_proj(activated * self.up_proj(x))


def ffn_param_count(config: LLMConfig, kind: str = "swiglu") -> int:
    h, i = config.hidden_size, config.intermediate_size
    gates = 2 if kind == "series" else 1
    return (gates + 2) * h * i + ((gates + 1) * i + h if config.mlp_bias else 0)
