"""Original PyTorch Eve / MoE-LLaVA (and LLaVA / MobileVLM) checkpoints -> eve-ms checkpoint directories.

The source is a folder with the original `config.json` and its weights (safetensors, sharded or
pytorch_model.bin). Eve's released code builds on MoE-LLaVA: its MoE layers are DeepSpeed's
(`mlp.deepspeed_moe.gate.wg` is a Linear(hidden, num_experts, no bias), the experts are copies of
the dense MLP in `mlp.deepspeed_moe.experts.deepspeed_experts.{e}`). Tensor names, source -> eve-ms:

| source | eve-ms |
|---|---|
| model.embed_tokens, model.layers.{i}.self_attn.*, *_layernorm, model.norm, lm_head | llm.<same name> |
| model.layers.{i}.mlp.{gate,gate_proj2,up,down}_proj (dense layers) | llm.model.layers.{i}.mlp.* |
| model.layers.{i}.attn_linear.{0,2} (PanGu-pi Pro, Eve's LLM) | llm.model.layers.{i}.attn_linear.{in,out}_proj |
| model.layers.{i}.mlp.deepspeed_moe.experts.deepspeed_experts.0.* | llm.model.layers.{i}.mlp.language_ffn.* |
| model.layers.{i}.mlp.deepspeed_moe.experts.deepspeed_experts.1.* | llm.model.layers.{i}.mlp.vision_ffn.* |
| model.layers.{i}.mlp.deepspeed_moe.gate.wg.weight [2, H] | llm.model.layers.{i}.mlp.router.weight [2, H] |
| model.mm_projector[.image_spatial_proj].<MobileVLM/LLaVA name> | adapter.<name> (`adapter.reference_name`) |
| model.{image,vision}_tower.{image,vision}_tower.vision_model.* | vision_tower.* (`hf_vision` names) |
| model.image_tower.<timm name> (`vision_tower_type: siglip`) | vision_tower.* (`hf_vision.timm_siglip_to_hf`) |

Both gate and router are [num_experts, hidden] with row e giving expert e's logit: no transpose.
An expert is a copy of its layer's FFN, so in Eve's LLM the experts of a layer below the split
have `gate_proj2` too (the release's stage 3 trains `gate_proj gate_proj2 down_proj up_proj wg`).

config.json gives the LLM (Llama fields; `moe_llava_zhizi`/`llava_zhizi`, Eve's, is the release's
InternLM: q/k/v biases from `bias` and PanGu-pi Pro's layers, see `hf_llm`), `moe.moe_layers_idx`
(the EVF layers), `moe.num_experts` (must be 2), `moe.capacity_factor` and `moe.min_capacity`, the
projector type (`image_projector_type` or `mm_projector_type`: mlp2x_gelu, ldpnet -> ldp, ldpnetv2 ->
ldpv2) and `mm_vision_select_layer`. The vision encoder's architecture comes from a Hugging Face (or
eve-ms component) vision folder (`--vision`): the original config only names it. Its weights come
from the checkpoint when the checkpoint has the tower (original trainings save it), else from that
folder. With `vision_tower_type: siglip` the release builds DeepSeek-VL's timm-style SigLIP
(`create_siglip_vit`) whatever the config's select settings say: every block and the final norm
(select_layer -1), every token, and timm's exact GELU (Hugging Face's SigLIP uses the tanh form);
the conversion builds the same and says so in its notes.

Not convertible, each an error naming the tensors: MoE-LLaVA's residual MoE (`mlp.mlp`,
`mlp.coefficient`), more than two experts, and any tensor the model has no place for. A source
that routes top-2 converts with a note: EVF layers route top-1 (DESIGN section 3).
`export_moe_llava_state_dict` gives the names back for a round trip.

Routing (`SOURCE_ROUTING`): by default the converted layers compute the source's function,
DeepSpeed's top-1 MoE (`sharded_moe.top1gating` + `MOELayer`): every token, text-only input
included, goes to the expert of its largest gate probability (ties to expert 0) and its output
is multiplied by that probability, so `evf.mode: moe` (no language-only path, no modality
prior, no redistribution) and `evf.combine: prob`. The capacity factors are the source's:
`moe.capacity_factor` while training, `moe.eval_capacity_factor` otherwise (DeepSpeed's
default 1.0 when the config has none), with `moe.min_capacity`; capacity = max(min_capacity,
ceil(factor x T / 2)) as DeepSpeed's `_capacity`, capped at T. Where an expert is over-full,
DeepSpeed keeps a random choice of its tokens (random token selection) and lets padding
compete; eve-ms keeps those of highest gate probability and padding never competes. Both give
the same output whenever the capacity holds every token, which eval_capacity_factor >= 2
guarantees with two experts. `--evf-mode multimodal --strategy img_gbpr --combine unit` turns
the layers into Eve's EVF instead (a different function from the source's).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from eve_ms.config import AdapterConfig, ConfigError, EveConfig, EVFConfig, LLMConfig
from eve_ms.convert.hf_llm import HARMLESS_EXTRA_TENSORS, hf_llm_name_table, llm_config_from_hf, read_hf_config
from eve_ms.convert.hf_to_eve import copy_into, find_tokenizer, load_vision
from eve_ms.convert.weights import CheckpointError, load_state_dict

# model_type of the original config -> the LLM family its tensors follow
SOURCE_LLM_TYPES = {
    "moe_llava_llama": "llama", "llava_llama": "llama", "llava": "llama", "mobilevlm": "llama",
    "moe_llava_mistral": "mistral", "llava_mistral": "mistral",
    "moe_llava_zhizi": "internlm", "llava_zhizi": "internlm",
}
# What a converted MoE layer computes unless asked otherwise: the source's top-1 MoE (module doc)
SOURCE_ROUTING = {"mode": "moe", "strategy": "gbpr", "combine": "prob"}
DEEPSPEED_EVAL_CAPACITY_FACTOR = 1.0  # TopKGate's and MoE-LLaVA's config default
PROJECTOR_TYPES = {"mlp2x_gelu": "mlp2x_gelu", "ldpnet": "ldp", "ldp": "ldp", "ldpnetv2": "ldpv2", "ldpv2": "ldpv2"}
TOWER_PREFIXES = ("model.image_tower.image_tower.", "model.vision_tower.vision_tower.")
TIMM_TOWER_PREFIX = "model.image_tower."  # the release's SigLIP tower is the image_tower itself
PROJECTOR_PREFIXES = ("model.mm_projector.image_spatial_proj.", "model.mm_projector.")
EXPERTS = ("language_ffn", "vision_ffn")  # expert 0, expert 1
FFN_TENSORS = re.compile(r"^(model\.layers\.(\d+)\.mlp)\.((?:gate_proj2?|up_proj|down_proj)\.(?:weight|bias))$")
UNSUPPORTED = {
    ".mlp.coefficient.": "MoE-LLaVA's residual MoE (use_residual)",
    ".mlp.mlp.": "MoE-LLaVA's residual MoE (use_residual)",
}
# The tower the release builds for `vision_tower_type: siglip` (builder.py: create_siglip_vit(select_layer=-1,
# select_feature="same")): the last block and the final norm, every token, timm's nn.GELU (exact, not tanh).
RELEASE_SIGLIP_TOWER = dict(select_layer=-1, hidden_act="gelu")


@dataclass
class SourceLayout:
    """What the original config.json says about the model."""

    llm: LLMConfig
    family: str  # llama | mistral | internlm
    moe_layers: list
    capacity_factor: float
    eval_capacity_factor: float
    min_capacity: int
    projector_type: str
    select_layer: int
    timm_siglip_tower: bool = False  # the release's `vision_tower_type: siglip` tower (timm names)
    notes: list = field(default_factory=list)


def read_source_config(path: str) -> SourceLayout:
    config_path = os.path.join(path, "config.json")
    hf = read_hf_config(path)
    model_type = hf.get("model_type")
    if model_type not in SOURCE_LLM_TYPES:
        raise ConfigError(f"{config_path}: model_type {model_type!r} is not an Eve / MoE-LLaVA / LLaVA layout "
                          f"(supported: {', '.join(sorted(SOURCE_LLM_TYPES))})")
    family = SOURCE_LLM_TYPES[model_type]
    llm = llm_config_from_hf(dict(hf, model_type=family), config_path)
    notes = []
    moe = hf.get("moe") or {}
    layers = list(moe.get("moe_layers_idx") or []) if moe.get("moe_enable", bool(moe)) else []
    if layers:
        experts = moe.get("num_experts") or []
        experts = experts * len(layers) if len(experts) == 1 else experts
        if len(experts) != len(layers) or any(n != 2 for n in experts):
            raise ConfigError(f"{config_path}: moe.num_experts={moe.get('num_experts')} for layers {layers}; "
                              "an EVF layer has exactly 2 experts (language, vision)")
        if moe.get("use_residual"):
            raise ConfigError(f"{config_path}: moe.use_residual is set: {UNSUPPORTED['.mlp.mlp.']} is not supported")
        if moe.get("top_k_experts", 1) != 1:
            notes.append(f"the source routes top-{moe['top_k_experts']}; eve-ms EVF layers route top-1")
    projector = hf.get("image_projector_type") or hf.get("mm_projector_type") or "mlp2x_gelu"
    if projector not in PROJECTOR_TYPES:
        raise ConfigError(f"{config_path}: projector type {projector!r} is not supported "
                          f"(supported: {', '.join(sorted(PROJECTOR_TYPES))})")
    timm_siglip = hf.get("vision_tower_type") == "siglip"
    select_layer = int(hf.get("mm_vision_select_layer", -2))
    if timm_siglip:
        notes.append(f"vision_tower_type siglip: the release's timm SigLIP tower (select_layer -1 with the final "
                     f"norm, every token, exact GELU) whatever mm_vision_select_layer={select_layer} says")
        select_layer = RELEASE_SIGLIP_TOWER["select_layer"]
    elif hf.get("mm_vision_select_feature", "patch") != "patch":
        raise ConfigError(f"{config_path}: mm_vision_select_feature={hf['mm_vision_select_feature']!r}; "
                          "only 'patch' (the class token dropped) is supported")
    if layers and "eval_capacity_factor" not in moe:
        notes.append(f"moe.eval_capacity_factor not in the config: DeepSpeed's default "
                     f"{DEEPSPEED_EVAL_CAPACITY_FACTOR} applies at inference")
    return SourceLayout(llm, family, sorted(layers), float(moe.get("capacity_factor", 1.5)),
                        float(moe.get("eval_capacity_factor", DEEPSPEED_EVAL_CAPACITY_FACTOR)),
                        int(moe.get("min_capacity", 4)), PROJECTOR_TYPES[projector], select_layer, timm_siglip, notes)


def llm_name_table(llm: LLMConfig, moe_layers: list) -> dict:
    """Source tensor name -> eve-ms parameter name for the LLM (experts and gates in `moe_layers`)."""
    table = {}
    moe_layers = set(moe_layers)
    for name, ours in hf_llm_name_table(llm).items():
        match = FFN_TENSORS.match(name)
        if match and int(match.group(2)) in moe_layers:
            layer, tensor = match.group(1), match.group(3)
            for index, expert in enumerate(EXPERTS):
                source = f"{layer}.deepspeed_moe.experts.deepspeed_experts.{index}.{tensor}"
                table[source] = f"llm.{layer}.{expert}.{tensor}"
            continue
        table[name] = f"llm.{ours}"
    for i in sorted(moe_layers):
        table[f"model.layers.{i}.mlp.deepspeed_moe.gate.wg.weight"] = f"llm.model.layers.{i}.mlp.router.weight"
    return table


def projector_name_table(model, adapter_type: str, prefix: str) -> dict:
    from eve_ms.models.adapter import reference_name

    return {prefix + reference_name(adapter_type, name): f"adapter.{name}"
            for name, _ in model.adapter.parameters_and_names()}


def _first_prefix(state: dict, prefixes: tuple, default: str | None = None) -> str | None:
    for prefix in prefixes:
        if any(name.startswith(prefix) for name in state):
            return prefix
    return default


def _unexpected_error(names: list, src: str) -> CheckpointError:
    reasons = sorted({why for name in names for marker, why in UNSUPPORTED.items() if marker in name})
    detail = f" ({'; '.join(reasons)} cannot be converted)" if reasons else ""
    listed = ", ".join(repr(n) for n in names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return CheckpointError(f"{src}: tensors the eve-ms model has no place for: {listed}{detail}")


def convert_moe_llava(src: str, out: str | None, vision: str, *, strategy: str | None = None,
                      mode: str | None = None, combine: str | None = None, capacity_factor: float | None = None,
                      eval_capacity_factor: float | None = None, tokenizer: str | None = None):
    """Convert the original checkpoint folder `src`; written to `out` if given.

    `vision`: a Hugging Face (or eve-ms component) vision folder giving the encoder's
    architecture. `mode`, `strategy`, `combine` default to `SOURCE_ROUTING`, the capacity
    factors to the source's. Returns (model, config, tokenizer or None, notes).
    """
    from eve_ms.checkpoint_dir import save_eve_checkpoint
    from eve_ms.convert.hf_llm import with_internlm_o_proj_bias
    from eve_ms.convert.hf_vision import load_encoder_weights, timm_siglip_to_hf
    from eve_ms.data.tokenizer import load_tokenizer
    from eve_ms.models.eve import EveForCausalLM

    layout = read_source_config(src)
    state = load_state_dict(src)
    encoder = load_vision(vision, select_layer=layout.select_layer)
    if layout.timm_siglip_tower:
        encoder = _as_release_siglip(encoder)
        tower = TIMM_TOWER_PREFIX if any(name.startswith(TIMM_TOWER_PREFIX) for name in state) else None
    else:
        tower = _first_prefix(state, TOWER_PREFIXES)
    if tower is not None:
        where = f"{src} ({tower}*)"
        tower_state = {name[len(tower):]: value for name, value in state.items() if name.startswith(tower)}
        if layout.timm_siglip_tower:
            tower_state = timm_siglip_to_hf(tower_state, where)
        load_encoder_weights(encoder, tower_state, encoder.config, where=where)
    else:
        layout.notes.append(f"no vision tower in the checkpoint: its weights come from {vision}")
    evf = EVFConfig(enabled=bool(layout.moe_layers), layers=layout.moe_layers or "alternate",
                    strategy=strategy or SOURCE_ROUTING["strategy"], mode=mode or SOURCE_ROUTING["mode"],
                    combine=combine or SOURCE_ROUTING["combine"],
                    capacity_factor=layout.capacity_factor if capacity_factor is None else capacity_factor,
                    eval_capacity_factor=(layout.eval_capacity_factor if eval_capacity_factor is None
                                          else eval_capacity_factor),
                    min_capacity=layout.min_capacity)
    config = EveConfig(vision=encoder.config, adapter=AdapterConfig(type=layout.projector_type), llm=layout.llm,
                       evf=evf)
    model = EveForCausalLM(config)

    if layout.family == "internlm":
        state = with_internlm_o_proj_bias(state, layout.llm)
    projector = _first_prefix(state, PROJECTOR_PREFIXES, PROJECTOR_PREFIXES[0])
    table = {**llm_name_table(layout.llm, layout.moe_layers),
             **projector_name_table(model, layout.projector_type, projector)}
    missing = [name for name in table if name not in state]
    if missing:
        raise CheckpointError(f"{src}: missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    unexpected = [name for name in state if name not in table and not (tower and name.startswith(tower))
                  and not HARMLESS_EXTRA_TENSORS.match(name)]
    if unexpected:
        raise _unexpected_error(unexpected, src)
    for prefix in ("llm.", "adapter."):
        tensors = {eve[len(prefix):]: np.asarray(state[name], np.float32)
                   for name, eve in table.items() if eve.startswith(prefix)}
        copy_into(model, prefix, tensors, src)
    copy_into(model, "vision_tower.", {n: p.asnumpy() for n, p in encoder.parameters_and_names()}, vision)

    tok = load_tokenizer(tokenizer) if tokenizer else find_tokenizer(src)
    if out is not None:
        save_eve_checkpoint(model, config, out, tokenizer=tok, metadata={"converted_from": src})
    return model, config, tok, layout.notes


def _as_release_siglip(encoder):
    """`encoder` rebuilt as the release's SigLIP tower (RELEASE_SIGLIP_TOWER) with the same weights."""
    import dataclasses

    from eve_ms.models.vision import build_vision_encoder

    if encoder.config.backbone != "siglip":
        raise ConfigError(f"vision_tower_type siglip needs a SigLIP vision folder, got {encoder.config.backbone}")
    config = dataclasses.replace(encoder.config, **RELEASE_SIGLIP_TOWER)
    rebuilt = build_vision_encoder(config)
    weights = dict(encoder.parameters_and_names())
    for name, param in rebuilt.parameters_and_names():
        param.set_data(weights[name].value().copy())
    return rebuilt


def export_moe_llava_state_dict(model, tower_prefix: str = TOWER_PREFIXES[0],
                                projector_prefix: str = PROJECTOR_PREFIXES[0], timm_siglip_tower: bool = False) -> dict:
    """The original names of an eve-ms Eve model's tensors (ViT vision towers; the inverse of the conversion).

    `timm_siglip_tower`: the tower in the release's timm layout under `model.image_tower.` (its unused
    attention-pool head is not part of the model, so it is not written)."""
    from eve_ms.convert.eve_to_hf import as_release_internlm
    from eve_ms.convert.hf_vision import hf_name, hf_siglip_to_timm

    config = model.config
    if config.vision.backbone not in ("siglip", "clip"):
        raise ConfigError("the original layout stores Hugging Face ViT towers; this model has "
                          f"{config.vision.backbone}")
    layers = config.evf.layer_indices(config.llm.num_layers)
    table = {**llm_name_table(config.llm, layers), **projector_name_table(model, config.adapter.type, projector_prefix)}
    params = {p.name: p for p in model.get_parameters()}
    state = {source: params[eve].asnumpy() for source, eve in table.items()}
    if not config.llm.is_uniform:  # PanGu-pi Pro: the release's InternLM tensors (no o_proj bias, inv_freq)
        state = as_release_internlm(config.llm, state)
    tower = {hf_name(name, "vision_model."): param.asnumpy()
             for name, param in model.vision_tower.parameters_and_names()}
    if timm_siglip_tower:
        if config.vision.backbone != "siglip":
            raise ConfigError(f"a timm SigLIP tower layout for a {config.vision.backbone} tower")
        tower, tower_prefix = hf_siglip_to_timm(tower), TIMM_TOWER_PREFIX
    state.update({tower_prefix + name: value for name, value in tower.items()})
    return state
