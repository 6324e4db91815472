"""A PyTorch reference of the LLM the Eve release runs, written here from its facts (not its code).

The release's `zhizi` InternLM (`eve/model/language_model/zhizi/modeling_internlm.py`) builds
PanGu-pi Pro as follows, and this module does the same, with module paths that give its tensor
names (`save_pretrained` layout):

- `split_dict = {29: 19, 12: 8, 22: 15}`: layers below the split index are "vanilla", the rest "aug".
- vanilla: FFN down((silu(gate(x)) + fast_gelu(gate2(x))) * up(x)), no biases; h = x + a.
- aug: SwiGLU FFN; h = x + a + attn_linear(a), attn_linear = Sequential(Linear(H, 128, no bias),
  FastGELU, Linear(128, H, no bias)), a the attention output (after o_proj).
- fast_gelu(x) = x * sigmoid(1.702 |x|) * exp(0.851 (x - |x|)) (MindSpore's FastGeLU).
- attention: q/k/v with bias when `bias` is true, o_proj without; plain multi-head; rotary with a
  persistent `inv_freq` buffer per layer (base 10000); scores / sqrt(head_dim) plus an additive
  causal mask of float32's minimum, softmax in float32. RMSNorm: variance in float32.
- position ids 0..S-1 when none are given; `lm_head` untied.
"""
import json
import math

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

RELEASE_SPLITS = {29: 19, 12: 8, 22: 15}
SHORTCUT_WIDTH = 128


def tiny_config(**overrides) -> dict:
    """The release's `InternLMConfig` fields of a tiny PanGu-pi Pro: 12 layers (split 8), q/k/v biases."""
    config = dict(architectures=["InternLMForCausalLM"], model_type="internlm", vocab_size=96, hidden_size=32,
                  intermediate_size=48, num_hidden_layers=12, num_attention_heads=4, hidden_act="silu",
                  max_position_embeddings=64, rms_norm_eps=1e-6, bias=True, tie_word_embeddings=False,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config.update(overrides)
    return config


class FastGELU(nn.Module):
    def forward(self, x):
        absolute = torch.abs(x)
        return x * torch.sigmoid(1.702 * absolute) * torch.exp(0.851 * (x - absolute))


class RMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


class Rotary(nn.Module):
    def __init__(self, dim, base=10000):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, positions):
        angles = positions[..., None].float() * self.inv_freq
        angles = torch.cat((angles, angles), -1)
        return angles.cos()[:, None], angles.sin()[:, None]


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), -1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, self.heads = c["hidden_size"], c["num_attention_heads"]
        self.head_dim = h // self.heads
        self.q_proj = nn.Linear(h, h, bias=c["bias"])
        self.k_proj = nn.Linear(h, h, bias=c["bias"])
        self.v_proj = nn.Linear(h, h, bias=c["bias"])
        self.o_proj = nn.Linear(h, h, bias=False)
        self.rotary_emb = Rotary(self.head_dim)

    def forward(self, x, positions, mask):
        b, s, h = x.shape

        def split(t):
            return t.view(b, s, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        cos, sin = self.rotary_emb(positions)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim) + mask
        probs = torch.softmax(scores, -1, dtype=torch.float32).to(q.dtype)
        return self.o_proj((probs @ v).transpose(1, 2).reshape(b, s, h))


class MLP(nn.Module):
    def __init__(self, c, series):
        super().__init__()
        h, i = c["hidden_size"], c["intermediate_size"]
        self.gate_proj = nn.Linear(h, i, bias=False)
        if series:
            self.gate_proj2 = nn.Linear(h, i, bias=False)
            self.gelu = FastGELU()
        self.down_proj = nn.Linear(i, h, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.series = series

    def forward(self, x):
        gate = nn.functional.silu(self.gate_proj(x))
        if self.series:
            gate = gate + self.gelu(self.gate_proj2(x))
        return self.down_proj(gate * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c, vanilla):
        super().__init__()
        h = c["hidden_size"]
        self.self_attn = Attention(c)
        self.mlp = MLP(c, series=vanilla)
        if not vanilla:
            self.attn_linear = nn.Sequential(nn.Linear(h, SHORTCUT_WIDTH, bias=False), FastGELU(),
                                             nn.Linear(SHORTCUT_WIDTH, h, bias=False))
        self.input_layernorm = RMSNorm(h, c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(h, c["rms_norm_eps"])
        self.vanilla = vanilla

    def forward(self, x, positions, mask):
        a = self.self_attn(self.input_layernorm(x), positions, mask)
        h = x + a if self.vanilla else x + a + self.attn_linear(a)
        return h + self.mlp(self.post_attention_layernorm(h))


class Decoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        split = RELEASE_SPLITS[c["num_hidden_layers"]]
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList([DecoderLayer(c, i < split) for i in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])


class PanguPiProForCausalLM(nn.Module):
    """logits = forward(input_ids [B, S] long, inputs_embeds=None, attention_mask=None)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config["hidden_size"], config["vocab_size"], bias=False)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, s, _ = x.shape
        minimum = torch.finfo(torch.float32).min
        allowed = torch.tril(torch.ones(s, s, dtype=torch.bool))[None, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, None, :]
        mask = torch.where(allowed, 0.0, minimum)
        positions = torch.arange(s)[None].expand(b, s)
        if attention_mask is not None:  # left padding: real tokens count from 0 (as generation does)
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        for layer in self.model.layers:
            x = layer(x, positions, mask)
        return self.lm_head(self.model.norm(x))


def build(config: dict, seed: int = 0) -> PanguPiProForCausalLM:
    """The reference with order-one random weights (norms around one, biases small), in eval mode."""
    model = PanguPiProForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(param.shape[-1]))
            else:
                param.copy_((1.0 if "norm" in name else 0.0) + 0.1 * torch.randn(param.shape, generator=gen))
    return model.eval()


def save_released_layout(model: PanguPiProForCausalLM, directory, weights: str = "safetensors") -> None:
    """config.json + model.safetensors (or pytorch_model.bin), as `InternLMForCausalLM.save_pretrained` writes."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.config))
    state = {name: value.detach().clone().contiguous() for name, value in model.state_dict().items()}
    if weights == "safetensors":
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, directory / "pytorch_model.bin")


def logits(model, ids, mask=None, inputs_embeds=None) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=None if ids is None else torch.as_tensor(np.asarray(ids), dtype=torch.long),
                    inputs_embeds=inputs_embeds,
                    attention_mask=None if mask is None else torch.as_tensor(mask))
    return out.numpy()
