"""Hugging Face Llama checkpoints and the Eve release's InternLM (PanGu-pi Pro) <-> the eve-ms LLM.

`load_hf_llm(path)` reads a Hugging Face model directory (config.json plus safetensors, sharded
safetensors or pytorch_model.bin), maps its config to `LLMConfig` and its tensors to the cell's
parameters through `hf_llm_name_table`; `export_hf_llm_state_dict(llm)` goes the other way. The
eve-ms parameter names are Hugging Face's, and nn.Dense stores weights [out, in] like torch's
Linear, so the table is one to one and nothing is transposed. Checks are strict: a missing tensor,
a tensor of the wrong shape and an unexpected tensor are errors that name the tensor.

model_type `internlm` is the format of the Eve release's LLM (`InternLMForCausalLM.save_pretrained`
of its `zhizi` code): Llama's tensor names, q/k/v biases when `bias` is true and none on o_proj
(loaded as `attention_bias` with a zero o_proj bias, the same function), and, at the depths the
release's split rule knows (`LLMConfig.RELEASE_LAYER_SPLITS`), PanGu-pi Pro's layers: below the
split the series FFN (`mlp.gate_proj2`), from it on a SwiGLU FFN and the attention-output shortcut
`attn_linear.0` / `attn_linear.2` (Linear(H, 128) -> FastGeLU -> Linear(128, H)). At other depths
the release's code cannot build a model; such a file is read as upstream InternLM (all layers plain).
"""
from __future__ import annotations

import json
import os
import re

import mindspore as ms
import numpy as np

from eve_ms.config import ConfigError, LLMConfig
from eve_ms.convert.weights import CheckpointError, load_state_dict
from eve_ms.models.llm import LLM

INTERNLM_TYPES = ("internlm",)
SUPPORTED_MODEL_TYPES = ("llama", "mistral") + INTERNLM_TYPES
# Tensors some checkpoints carry that hold no weights of the model (recomputed from the config).
HARMLESS_EXTRA_TENSORS = re.compile(r"^model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq$")
# The Eve release's attention-output shortcut: `nn.Sequential(Linear(H, 128), FastGELU, Linear(128, H))`.
RELEASE_ATTN_SHORTCUT = dict(attn_shortcut_width=128, attn_shortcut_act="fast_gelu")
RELEASE_PANGU_LAYOUT = dict(ffn_below_split="series", ffn_from_split="swiglu", **RELEASE_ATTN_SHORTCUT)

_ATTENTION_TENSORS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_FFN_TENSORS = {
    "swiglu": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    "series": ("mlp.gate_proj", "mlp.gate_proj2", "mlp.up_proj", "mlp.down_proj"),
}
# the release's `attn_linear` Sequential indices -> our AttentionShortcut's linear layers
_SHORTCUT_TENSORS = {"attn_linear.0.weight": "attn_linear.in_proj.weight",
                     "attn_linear.2.weight": "attn_linear.out_proj.weight"}


def llm_config_from_hf(hf: dict, source: str = "config.json") -> LLMConfig:
    """`LLMConfig` from a Hugging Face config dict (model_type llama, mistral, or the release's internlm).

    pad_token_id None becomes 0 (padding positions are masked, their id is never read);
    a list of eos_token_id keeps its first entry.
    """
    model_type = hf.get("model_type")
    layout = {}
    if model_type in INTERNLM_TYPES:
        if hf.get("num_hidden_layers") in LLMConfig.RELEASE_LAYER_SPLITS:
            layout = RELEASE_PANGU_LAYOUT
        hf = dict(hf, model_type="llama", attention_bias=bool(hf.get("bias", True)))  # InternLMConfig's default
        model_type = "llama"
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"{source}: unsupported model_type {model_type!r} (architectures {hf.get('architectures')}); "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if key not in hf:
            raise ConfigError(f"{source}: missing key {key!r}")
    sliding_window = hf.get("sliding_window")
    max_positions = hf.get("max_position_embeddings", 2048)
    if model_type == "mistral" and sliding_window is not None and sliding_window < max_positions:
        raise ConfigError(
            f"{source}: mistral sliding_window={sliding_window} < max_position_embeddings={max_positions} "
            "is not supported (only full causal attention)"
        )
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(f"{source}: partial_rotary_factor={hf['partial_rotary_factor']} is not supported")
    if hf.get("pretraining_tp", 1) not in (1, None):
        raise ConfigError(f"{source}: pretraining_tp={hf['pretraining_tp']} is not supported")

    def token_id(key, default):
        value = hf.get(key)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        return default if value is None else int(value)

    config = LLMConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads"),
        head_dim=hf.get("head_dim"),
        max_position_embeddings=max_positions,
        rope_theta=float(hf.get("rope_theta", 10000.0)),
        rope_scaling=dict(hf["rope_scaling"]) if hf.get("rope_scaling") else None,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        hidden_act=hf.get("hidden_act", "silu"),
        pad_token_id=token_id("pad_token_id", 0),
        bos_token_id=token_id("bos_token_id", 1),
        eos_token_id=token_id("eos_token_id", 2),
        **layout,
    )
    if config.head_dim == config.hidden_size // config.num_heads:
        config.head_dim = None  # the implied value; keeps yaml files minimal
    return config


def read_hf_config(path: str | os.PathLike) -> dict:
    config_path = os.path.join(os.fspath(path), "config.json")
    if not os.path.exists(config_path):
        raise ConfigError(f"no config.json in {os.fspath(path)}")
    with open(config_path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{config_path}: not valid JSON: {err}") from err


def hf_llm_name_table(config: LLMConfig) -> dict[str, str]:
    """Hugging Face tensor name -> eve-ms parameter name, for every weight of the model."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not config.tie_word_embeddings:
        names.append("lm_head.weight")
    table = {}
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}."
        for linear in _ATTENTION_TENSORS + _FFN_TENSORS[config.ffn_kind(i)]:
            names.append(f"{prefix}{linear}.weight")
            has_bias = config.attention_bias if linear.startswith("self_attn") else config.mlp_bias
            if has_bias:
                names.append(f"{prefix}{linear}.bias")
        names += [f"{prefix}input_layernorm.weight", f"{prefix}post_attention_layernorm.weight"]
        if config.attn_shortcut_width_of(i):
            table.update({prefix + hf: prefix + ours for hf, ours in _SHORTCUT_TENSORS.items()})
    return {**{name: name for name in names}, **table}


def load_hf_llm_weights(llm: LLM, state: dict[str, np.ndarray], source: str = "checkpoint") -> None:
    """Copy Hugging Face-named tensors into `llm`, strictly (missing, extra, mis-shaped: errors)."""
    table = hf_llm_name_table(llm.config)
    params = dict(llm.parameters_and_names())
    state = dict(state)
    if llm.config.tie_word_embeddings and "lm_head.weight" in state:
        # some tied checkpoints store the shared matrix twice; accept it only if it is the same one
        head = state.pop("lm_head.weight")
        embed = state.get("model.embed_tokens.weight")
        if embed is None or head.shape != embed.shape or not np.array_equal(head, embed):
            raise CheckpointError(
                f"{source}: tie_word_embeddings is set but lm_head.weight differs from model.embed_tokens.weight"
            )
    missing = [name for name in table if name not in state]
    if missing:
        raise CheckpointError(f"{source}: missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    unexpected = [n for n in state if n not in table and not HARMLESS_EXTRA_TENSORS.match(n)]
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected in all); "
            "the config does not describe this checkpoint"
        )
    for hf_name, ms_name in table.items():
        if ms_name not in params:
            raise CheckpointError(f"model has no parameter {ms_name!r} for tensor {hf_name!r}")
        param, value = params[ms_name], state[hf_name]
        if tuple(value.shape) != tuple(param.shape):
            raise CheckpointError(
                f"{source}: tensor {hf_name!r} has shape {tuple(value.shape)}, the model expects {tuple(param.shape)}"
            )
        param.set_data(ms.Tensor(np.ascontiguousarray(value, dtype=np.float32)).astype(param.dtype))


def load_hf_llm(path: str | os.PathLike, dtype=ms.float32, **overrides) -> LLM:
    """Build the eve-ms LLM from a Hugging Face Llama-architecture model directory.

    `overrides` replace fields of the mapped `LLMConfig` (e.g. max_position_embeddings);
    `dtype` is the parameters' dtype (float32 on CPU; float16/bfloat16 on devices that run them).
    """
    path = os.fspath(path)
    hf = read_hf_config(path)
    config = llm_config_from_hf(hf, os.path.join(path, "config.json"))
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ConfigError(f"load_hf_llm: unknown LLMConfig field {key!r} in overrides")
        setattr(config, key, value)
    llm = LLM(config)
    state = load_state_dict(path)
    if hf.get("model_type") in INTERNLM_TYPES:
        state = with_internlm_o_proj_bias(state, config)
    load_hf_llm_weights(llm, state, path)
    if dtype != ms.float32:
        for param in llm.get_parameters():
            param.set_dtype(dtype)
    return llm


def with_internlm_o_proj_bias(state: dict, config: LLMConfig) -> dict:
    """InternLM has q/k/v biases but none on o_proj: add the zero o_proj biases `attention_bias` expects."""
    state = dict(state)
    for i in range(config.num_layers):
        name = f"model.layers.{i}.self_attn.o_proj.bias"
        if config.attention_bias and name not in state:
            state[name] = np.zeros(config.hidden_size, np.float32)
    return state


def export_hf_llm_state_dict(llm: LLM) -> dict[str, np.ndarray]:
    """Hugging Face-named float32 numpy tensors of a dense `llm` (the reverse of `load_hf_llm_weights`)."""
    if llm.num_evf_layers:
        raise ValueError("an LLM with EVF layers has no Hugging Face Llama layout; export a dense LLM")
    params = dict(llm.parameters_and_names())
    return {
        hf_name: params[ms_name].astype(ms.float32).asnumpy()
        for hf_name, ms_name in hf_llm_name_table(llm.config).items()
    }
