"""Hugging Face SigLIP / CLIP / ResNet checkpoints -> frozen eve_ms vision encoders.

Supported directories (`config.json` + safetensors or pytorch_model.bin):

| model_type | backbone | config | tensors used |
|---|---|---|---|
| siglip_vision_model | siglip | the file | `vision_model.*` |
| siglip (full model) | siglip | its `vision_config` | `vision_model.*` (text tower ignored) |
| clip_vision_model | clip | the file | `vision_model.*` |
| clip (full model) | clip | its `vision_config` | `vision_model.*` (text tower, projections ignored) |
| resnet | resnet | the file | `*` (ResNetModel) or `resnet.*` (ResNetForImageClassification) |

Our cells mirror Hugging Face's module paths, so a tensor's name is the cell's parameter
name plus the checkpoint's prefix, with MindSpore's leaf names renamed (`LEAF_NAMES`); no
tensor needs a transpose (nn.Dense and nn.Conv2d store weights in torch's layout).

The Eve release's SigLIP tower is DeepSeek-VL's timm-style ViT (`siglip_vit.py`,
`siglip_large_patch16_384`), whose tensors `timm_siglip_to_hf` renames to Hugging Face's (and
`hf_siglip_to_timm` back): its fused `attn.qkv` is split into q/k/v, `pos_embed` [1, N, C] loses
its batch axis, and its final `norm` is Hugging Face's `post_layernorm` (both are big_vision's
`Transformer/encoder_norm` in the ports of timm's `_load_weights` and transformers'
`convert_siglip_to_hf`). Its unused `attn_pool` head is dropped, as Hugging Face's `head` is.

`select_layer` (Hugging Face `hidden_states` indexing) defaults to None = the backbone's
default: -2 (second-to-last layer) for SigLIP/CLIP, -1 (last stage) for ResNet. Tensors
the encoder does not build (layers after the selected one, a post-layernorm not applied,
SigLIP's pooling head, ResNet's classifier, `position_ids` buffers) are skipped; any other
missing, unexpected or mis-shaped tensor is an error naming it.
"""
from __future__ import annotations

import json
import os
import re
from typing import Optional

import mindspore as ms
import numpy as np

from eve_ms.config import VisionConfig
from eve_ms.convert.weights import CheckpointError, load_state_dict

# model_type -> (backbone, key of the vision sub-config or None when the file is the vision config)
MODEL_TYPES = {
    "siglip_vision_model": ("siglip", None),
    "siglip": ("siglip", "vision_config"),
    "clip_vision_model": ("clip", None),
    "clip": ("clip", "vision_config"),
    "resnet": ("resnet", None),
}

# Hugging Face config key -> VisionConfig field, with Hugging Face's default for keys a file omits.
HF_FIELDS = {
    "siglip": {
        "image_size": ("image_size", 224), "patch_size": ("patch_size", 16), "num_channels": ("num_channels", 3),
        "hidden_size": ("hidden_size", 768), "intermediate_size": ("intermediate_size", 3072),
        "num_hidden_layers": ("num_layers", 12), "num_attention_heads": ("num_heads", 12),
        "hidden_act": ("hidden_act", "gelu_pytorch_tanh"), "layer_norm_eps": ("layer_norm_eps", 1e-6),
    },
    "clip": {
        "image_size": ("image_size", 224), "patch_size": ("patch_size", 32), "num_channels": ("num_channels", 3),
        "hidden_size": ("hidden_size", 768), "intermediate_size": ("intermediate_size", 3072),
        "num_hidden_layers": ("num_layers", 12), "num_attention_heads": ("num_heads", 12),
        "hidden_act": ("hidden_act", "quick_gelu"), "layer_norm_eps": ("layer_norm_eps", 1e-5),
    },
    "resnet": {
        "num_channels": ("num_channels", 3), "embedding_size": ("embedding_size", 64),
        "hidden_sizes": ("hidden_sizes", [256, 512, 1024, 2048]), "depths": ("depths", [3, 4, 6, 3]),
        "layer_type": ("layer_type", "bottleneck"), "hidden_act": ("hidden_act", "relu"),
        "downsample_in_first_stage": ("downsample_in_first_stage", False),
        "downsample_in_bottleneck": ("downsample_in_bottleneck", False),
    },
}
RESNET_DEFAULT_IMAGE_SIZE = 224  # ResNetConfig has no image size; ImageNet's evaluation crop

# Prefixes the encoder's tensors may carry, tried in order.
CHECKPOINT_PREFIXES = {"siglip": ("vision_model.",), "clip": ("vision_model.",), "resnet": ("resnet.", "")}

# MindSpore leaf parameter name -> Hugging Face's (LayerNorm / BatchNorm / Embedding)
LEAF_NAMES = {
    "gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var",
    "embedding_table": "weight",
}

# Tensors (below the prefix) the encoder never needs.
_SKIPPED = re.compile(r"^(post_layernorm\.|head\.|classifier\.|embeddings\.position_ids$|.*\.num_batches_tracked$)")
_LAYER_INDEX = re.compile(r"^encoder\.(?:layers|stages)\.(\d+)\.")


def hf_name(param_name: str, prefix: str = "") -> str:
    """Hugging Face tensor name of one of our encoder's parameters."""
    path, _, leaf = param_name.rpartition(".")
    return f"{prefix}{path}.{LEAF_NAMES.get(leaf, leaf)}" if path else f"{prefix}{LEAF_NAMES.get(leaf, leaf)}"


def _vision_section(hf_config: dict, where: str) -> tuple[str, dict]:
    model_type = hf_config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"{where}: unsupported vision model_type {model_type!r}; supported: {', '.join(sorted(MODEL_TYPES))}"
        )
    backbone, sub_key = MODEL_TYPES[model_type]
    section = hf_config if sub_key is None else hf_config.get(sub_key) or {}
    return backbone, section


def vision_config_from_hf(
    hf_config: dict,
    preprocessor: Optional[dict] = None,
    select_layer: Optional[int] = None,
    image_size: Optional[int] = None,
    where: str = "config.json",
) -> VisionConfig:
    """A VisionConfig from a Hugging Face config dict (and optionally its preprocessor_config.json dict).

    `image_size` overrides the config's (ResNet configs have none: the preprocessor's crop
    size, else 224). Image mean/std come from the preprocessor when given, else the
    backbone's defaults.
    """
    backbone, section = _vision_section(hf_config, where)
    kwargs = {"backbone": backbone, "select_layer": select_layer}
    for hf_key, (name, default) in HF_FIELDS[backbone].items():
        kwargs[name] = section.get(hf_key, default)
    preprocessor = preprocessor or {}
    if backbone == "resnet":
        kwargs["image_size"] = _preprocessor_size(preprocessor) or RESNET_DEFAULT_IMAGE_SIZE
    if image_size is not None:
        kwargs["image_size"] = image_size
    for key in ("image_mean", "image_std"):
        if key in preprocessor:
            kwargs[key] = [float(v) for v in preprocessor[key]]
    return VisionConfig(**kwargs)


def _preprocessor_size(preprocessor: dict) -> Optional[int]:
    """The square input side a Hugging Face image processor produces, if it says."""
    for key in ("crop_size", "size"):
        value = preprocessor.get(key)
        if isinstance(value, int):
            return value
        if isinstance(value, dict):
            for sub in ("height", "shortest_edge"):
                if isinstance(value.get(sub), int):
                    return value[sub]
    return None


def _read_json(path: str, required: bool) -> Optional[dict]:
    if not os.path.exists(path):
        if required:
            raise CheckpointError(f"{path} not found: not a Hugging Face model directory")
        return None
    with open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: not valid JSON: {err}") from err


def _find_prefix(state: dict, first_name: str, backbone: str, path: str) -> str:
    for prefix in CHECKPOINT_PREFIXES[backbone]:
        if prefix + first_name in state:
            return prefix
    tried = ", ".join(repr(p + first_name) for p in CHECKPOINT_PREFIXES[backbone])
    raise CheckpointError(f"{path}: no {backbone} vision tensors found (looked for {tried})")


def load_encoder_weights(encoder, state: dict, config: VisionConfig, dtype=ms.float32, where: str = "checkpoint"):
    """Copy Hugging Face tensors (`state`: name -> numpy array) into `encoder`, strictly."""
    params = list(encoder.parameters_and_names())
    prefix = _find_prefix(state, hf_name(params[0][0]), config.backbone, where)
    missing, mismatched, used = [], [], set()
    for name, param in params:
        key = hf_name(name, prefix)
        if key not in state:
            missing.append(key)
            continue
        used.add(key)
        value = np.asarray(state[key])
        if tuple(value.shape) != tuple(param.shape):
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(param.shape)}")
            continue
        if param.dtype != dtype:
            param.set_dtype(dtype)
        param.set_data(ms.Tensor(value, dtype=dtype))
    unexpected = []
    for key in state:
        if key in used or not key.startswith(prefix):
            continue
        local = key[len(prefix):]
        if _SKIPPED.match(local):
            continue
        layer = _LAYER_INDEX.match(local)
        if layer and config.layers_used <= int(layer.group(1)) < config.backbone_depth:
            continue  # after the selected hidden state: not built
        unexpected.append(key)
    problems = []
    if missing:
        problems.append(f"missing tensors {_listing(missing)}")
    if mismatched:
        problems.append(f"shape mismatches {_listing(mismatched)}")
    if unexpected:
        problems.append(f"unexpected tensors (config and checkpoint disagree?) {_listing(unexpected)}")
    if problems:
        raise CheckpointError(f"{where}: " + "; ".join(problems))
    return encoder


# timm (DeepSeek-VL / Eve release) SigLIP name -> Hugging Face `SiglipVisionModel` name, by pattern
_TIMM_SIGLIP_NAMES = (
    (re.compile(r"^patch_embed\.proj\.(weight|bias)$"), r"vision_model.embeddings.patch_embedding.\1"),
    (re.compile(r"^blocks\.(\d+)\.norm([12])\.(weight|bias)$"), r"vision_model.encoder.layers.\1.layer_norm\2.\3"),
    (re.compile(r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$"),
     r"vision_model.encoder.layers.\1.self_attn.out_proj.\2"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)$"), r"vision_model.encoder.layers.\1.mlp.fc\2.\3"),
    (re.compile(r"^norm\.(weight|bias)$"), r"vision_model.post_layernorm.\1"),
)
_TIMM_QKV = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_TIMM_POS_EMBED = "pos_embed"
_HF_POS_EMBED = "vision_model.embeddings.position_embedding.weight"
_TIMM_UNUSED = re.compile(r"^attn_pool\.")  # the MAP head: built by the release, never run (ignore_head)


def timm_siglip_to_hf(state: dict, where: str = "checkpoint") -> dict:
    """timm-style SigLIP tensors (names below the tower's prefix) -> Hugging Face `vision_model.*` tensors."""
    out, unknown = {}, []
    for name, value in state.items():
        value = np.asarray(value)
        qkv = _TIMM_QKV.match(name)
        if qkv:
            layer, leaf = qkv.groups()
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), np.split(value, 3, axis=0)):
                out[f"vision_model.encoder.layers.{layer}.self_attn.{part}.{leaf}"] = chunk
        elif name == _TIMM_POS_EMBED:
            out[_HF_POS_EMBED] = value.reshape(value.shape[-2], value.shape[-1])
        elif _TIMM_UNUSED.match(name):
            continue
        else:
            for pattern, replacement in _TIMM_SIGLIP_NAMES:
                if pattern.match(name):
                    out[pattern.sub(replacement, name)] = value
                    break
            else:
                unknown.append(name)
    if unknown:
        raise CheckpointError(f"{where}: tensors a timm-style SigLIP tower does not have: {_listing(unknown)}")
    return out


def hf_siglip_to_timm(state: dict) -> dict:
    """Hugging Face `vision_model.*` SigLIP tensors -> timm-style names (q/k/v fused): `timm_siglip_to_hf`'s inverse."""
    out, qkv = {}, {}
    for name, value in state.items():
        value = np.asarray(value)
        if name == _HF_POS_EMBED:
            out[_TIMM_POS_EMBED] = value[None]
            continue
        match = re.match(r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", name)
        if match:
            qkv.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = value
            continue
        out[_hf_to_timm_name(name)] = value
    for (layer, leaf), parts in qkv.items():
        out[f"blocks.{layer}.attn.qkv.{leaf}"] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    return out


_HF_SIGLIP_TO_TIMM = (
    (re.compile(r"^vision_model\.embeddings\.patch_embedding\."), "patch_embed.proj."),
    (re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm([12])\."), r"blocks.\1.norm\2."),
    (re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\."), r"blocks.\1.attn.proj."),
    (re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.fc([12])\."), r"blocks.\1.mlp.fc\2."),
    (re.compile(r"^vision_model\.post_layernorm\."), "norm."),
)


def _hf_to_timm_name(name: str) -> str:
    for pattern, replacement in _HF_SIGLIP_TO_TIMM:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    raise CheckpointError(f"no timm-style SigLIP name for {name!r}")


def _listing(items: list, limit: int = 8) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more


def load_hf_vision(
    path: str | os.PathLike,
    select_layer: Optional[int] = None,
    dtype=ms.float32,
    image_size: Optional[int] = None,
):
    """A Hugging Face SigLIP / CLIP / ResNet directory -> frozen eve_ms encoder with its weights.

    select_layer: Hugging Face `hidden_states` index; None = backbone default (-2 ViTs, -1 ResNet).
    dtype: the weights' MindSpore dtype (pixels are cast to it).
    image_size: input side; defaults to the config's (ResNet: preprocessor crop, else 224).
    """
    from eve_ms.models.vision import build_vision_encoder

    path = os.fspath(path)
    config_path = os.path.join(path, "config.json")
    hf_config = _read_json(config_path, required=True)
    preprocessor = _read_json(os.path.join(path, "preprocessor_config.json"), required=False)
    config = vision_config_from_hf(hf_config, preprocessor, select_layer, image_size, where=config_path)
    encoder = build_vision_encoder(config)
    return load_encoder_weights(encoder, load_state_dict(path), config, dtype, where=path)
