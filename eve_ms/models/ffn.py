"""The SwiGLU feed-forward block of a Llama-style layer: the dense FFN and both experts of an EVF layer."""
from mindspore import nn, ops

from eve_ms.config import LLMConfig


class FeedForward(nn.Cell):
    """down(act(gate(x)) * up(x)); weight names match Hugging Face Llama's `mlp`.

    Linear layers are `nn.Dense` because MindFormers' LoRA replaces exactly that type.
    """

    def __init__(self, config: LLMConfig):
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {config.hidden_act!r} for the FFN (supported: silu)")
        h, i, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Dense(h, i, has_bias=bias)
        self.up_proj = nn.Dense(h, i, has_bias=bias)
        self.down_proj = nn.Dense(i, h, has_bias=bias)

    def construct(self, x):
        gate = self.gate_proj(x)
        # silu written out: MindSpore's CPU SiLU and SiLUGrad expand to more passes (9.4 vs 11.6 ms fwd+bwd
        # at 512 x 1728); the sigmoid is kept for the backward pass either way
        return self.down_proj(gate * ops.sigmoid(gate) * self.up_proj(x))


def ffn_param_count(config: LLMConfig) -> int:
    h, i = config.hidden_size, config.intermediate_size
    return 3 * h * i + (2 * i + h if config.mlp_bias else 0)
