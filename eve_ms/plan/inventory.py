"""What an Eve model is made of, from its config alone: every matrix product with its shape, and every weight.

No MindSpore import: the planner reads a yaml and answers in milliseconds. The counts are checked
against the instantiated model in tests/plan (they must be equal, tensor by tensor in total).

A `Dense` is one nn.Dense (or an equivalent weight matrix) applied to `rows` rows per sample; `part`
says where it lives (vision, adapter, llm layer i, lm_head) and `role` what it is (q_proj, gate_proj,
vision_ffn.up_proj, ...). Rows depend on the micro-batch and sequence, so they are given per sample
(vision: patches, adapter: its grids, LLM: sequence tokens, EVF experts: their capacity share).
"""
from __future__ import annotations

from dataclasses import dataclass

from eve_ms.config import ConfigError, EveConfig, LLMConfig, VisionConfig

VIT_BACKBONES = {
    # backbone: (patch bias, class token, pre-layernorm, post-layernorm)  -- Hugging Face's SigLIP / CLIP ViTs
    "siglip": (True, False, False, True),
    "clip": (False, True, True, False),
}


@dataclass(frozen=True)
class Dense:
    part: str  # vision | adapter | llm | lm_head
    layer: int  # decoder / encoder layer index, -1 outside layers
    role: str
    fan_in: int
    fan_out: int
    bias: bool = False
    expert: str = ""  # "" | language | vision: which EVF expert (rows = its capacity)

    @property
    def params(self) -> int:
        return self.fan_in * self.fan_out + (self.fan_out if self.bias else 0)


def _check_vit(vision: VisionConfig) -> tuple:
    if vision.backbone not in VIT_BACKBONES:
        raise ConfigError(
            f"vision.backbone {vision.backbone!r}: eve-ms plan counts ViT backbones ({', '.join(VIT_BACKBONES)})"
        )
    return VIT_BACKBONES[vision.backbone]


def vision_param_count(vision: VisionConfig) -> int:
    """Weights of the frozen ViT as built (layers after select_layer are not built; see VisionConfig)."""
    patch_bias, class_token, pre_norm, post_norm = _check_vit(vision)
    width, inner = vision.hidden_size, vision.intermediate_size
    embeddings = vision.num_channels * vision.patch_size**2 * width + width * patch_bias
    embeddings += (vision.num_tokens + class_token) * width + width * class_token
    layer = 4 * (width * width + width) + 2 * (width * inner) + inner + width + 2 * 2 * width
    final_norm = post_norm and vision.layers_used == vision.backbone_depth
    return embeddings + 2 * width * (pre_norm + final_norm) + layer * vision.layers_used


def squeeze_channels(channels: int, divisor: int = 8) -> int:
    """torchvision's squeeze-excite width (as the LDP adapter builds it)."""
    target = channels // 4
    rounded = max(divisor, (target + divisor // 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * target else rounded


def adapter_param_count(config: EveConfig) -> int:
    kind, c_in, h = config.adapter.type, config.vision.feature_dim, config.llm.hidden_size
    mlp = c_in * h + h + h * h + h
    if kind == "mlp2x_gelu":
        return mlp
    if kind == "ldp":
        s = squeeze_channels(h)
        block = 9 * h + 2 * h + (h * s + s + s * h + h) + h * h + 2 * h  # depthwise + LN, SE, project + LN
        return mlp + 2 * block
    if kind == "ldpv2":
        return mlp + 9 * h + h
    raise ConfigError(f"adapter.type {kind!r} is not one eve-ms plan knows (ldp, ldpv2, mlp2x_gelu)")


def llm_layer_denses(llm: LLMConfig, layer: int, evf_layers: set) -> list[Dense]:
    """The nn.Dense layers of decoder layer `layer` (both experts and the router in an EVF layer)."""
    h, d = llm.hidden_size, llm.dim_per_head
    q, kv, bias = llm.num_heads * d, llm.kv_heads * d, llm.attention_bias
    out = [Dense("llm", layer, "q_proj", h, q, bias), Dense("llm", layer, "k_proj", h, kv, bias),
           Dense("llm", layer, "v_proj", h, kv, bias), Dense("llm", layer, "o_proj", q, h, bias)]
    width = llm.attn_shortcut_width_of(layer)
    if width:
        out += [Dense("llm", layer, "attn_linear.in_proj", h, width), Dense("llm", layer, "attn_linear.out_proj",
                                                                            width, h)]
    gates = ("gate_proj", "gate_proj2") if llm.ffn_kind(layer) == "series" else ("gate_proj",)
    experts = ("language_ffn", "vision_ffn") if layer in evf_layers else ("mlp",)
    for expert in experts:
        tag = "" if expert == "mlp" else expert.split("_")[0]
        prefix = "" if expert == "mlp" else f"{expert}."
        for gate in gates:
            out.append(Dense("llm", layer, prefix + gate, h, llm.intermediate_size, llm.mlp_bias, tag))
        out.append(Dense("llm", layer, prefix + "up_proj", h, llm.intermediate_size, llm.mlp_bias, tag))
        out.append(Dense("llm", layer, prefix + "down_proj", llm.intermediate_size, h, llm.mlp_bias, tag))
    if layer in evf_layers:
        out.append(Dense("llm", layer, "router", h, 2))
    return out


def llm_denses(config: EveConfig) -> list[Dense]:
    llm = config.llm
    evf_layers = set(config.evf.layer_indices(llm.num_layers))
    out = []
    for i in range(llm.num_layers):
        out += llm_layer_denses(llm, i, evf_layers)
    if not llm.tie_word_embeddings:
        out.append(Dense("lm_head", -1, "lm_head", llm.hidden_size, llm.vocab_size))
    return out


def llm_param_count(config: EveConfig) -> int:
    """Decoder weights (EVF experts and routers included) + embeddings + norms + lm_head."""
    llm = config.llm
    norms = llm.hidden_size * (2 * llm.num_layers + 1)
    return sum(d.params for d in llm_denses(config)) + llm.vocab_size * llm.hidden_size + norms


def param_counts(config: EveConfig) -> dict:
    """Parameters by part, as `EveConfig.param_counts()` reports them (same keys), from formulas only."""
    vision = vision_param_count(config.vision)
    adapter = adapter_param_count(config)
    llm_all = llm_param_count(config)
    evf_layers = set(config.evf.layer_indices(config.llm.num_layers))
    vision_ffns = sum(d.params for d in llm_denses(config) if d.expert == "vision")
    routers = sum(d.params for d in llm_denses(config) if d.role == "router")
    evf_extra = vision_ffns + routers if evf_layers else 0
    total = vision + adapter + llm_all
    return {"vision": vision, "adapter": adapter, "llm": llm_all - evf_extra, "evf_extra": evf_extra,
            "total": total, "activated": total - vision_ffns}
