"""The LLM of an eve-ms checkpoint -> a Hugging Face folder (config.json + model.safetensors).

An EVF layer becomes the dense MLP holding its language FFN (its router and vision FFN are left
out): the exported model is the checkpoint's language-only path, which for a stage-3 Eve is the
stage-2 LLM the paper promises to preserve.

The format follows the layers: an LLM whose layers are all alike is written as a Hugging Face
Llama (`LlamaForCausalLM`); one with PanGu-pi Pro's layers is written in the Eve release's own
format, `InternLMForCausalLM` (model_type internlm: q/k/v biases, no o_proj bias, `mlp.gate_proj2`,
`attn_linear.0` / `attn_linear.2`, and the rotary `inv_freq` buffers its save_pretrained writes), which
only holds the release's layout: its split rule, a width-128 FastGeLU shortcut, plain multi-head
attention with the default rotary embedding. Anything else is an error saying what does not fit.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from eve_ms.config import ConfigError, LLMConfig
from eve_ms.convert.hf_llm import RELEASE_PANGU_LAYOUT, hf_llm_name_table

_EVF_PARAM = re.compile(r"^(model\.layers\.\d+\.mlp)\.(language_ffn|vision_ffn|router)(\..+)$")


def _token_ids(config: LLMConfig) -> dict:
    return {"pad_token_id": config.pad_token_id, "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_id}


def hf_config_from_llm(config: LLMConfig) -> dict:
    """A transformers `LlamaConfig` dict describing the same model."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.dim_per_head,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.attention_bias,
        "mlp_bias": config.mlp_bias,
        "hidden_act": config.hidden_act,
        **_token_ids(config),
        "torch_dtype": "float32",
    }


def internlm_config_from_llm(config: LLMConfig) -> dict:
    """The Eve release's `InternLMConfig` dict (model_type internlm) describing the same model."""
    return {
        "architectures": ["InternLMForCausalLM"],
        "model_type": "internlm",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "bias": config.attention_bias,
        "tie_word_embeddings": config.tie_word_embeddings,
        **_token_ids(config),
        "torch_dtype": "float32",
    }


def release_layout_mismatches(config: LLMConfig) -> list[str]:
    """What keeps `config` from being the release's InternLM PanGu-pi Pro layout (empty: it is one)."""
    wanted = {**RELEASE_PANGU_LAYOUT, "layer_split": LLMConfig.RELEASE_LAYER_SPLITS.get(config.num_layers),
              "kv_heads": config.num_heads, "dim_per_head": config.hidden_size // config.num_heads,
              "rope_theta": 10000.0, "rope_scaling": None, "mlp_bias": False}
    actual = {key: getattr(config, key) for key in wanted}
    actual["layer_split"] = config.split_index
    return [f"{key}={actual[key]!r} (the release has {value!r})" for key, value in wanted.items()
            if actual[key] != value]


def rotary_inv_freq(config: LLMConfig) -> np.ndarray:
    """The release's `rotary_emb.inv_freq` buffer, computed as it does in float32."""
    dim = np.float32(config.dim_per_head)
    exponents = np.arange(0, config.dim_per_head, 2, dtype=np.int64).astype(np.float32) / dim
    return (np.float32(1.0) / (np.float32(config.rope_theta) ** exponents)).astype(np.float32)


def dense_llm_tensors(llm) -> tuple[LLMConfig, dict]:
    """(config, Hugging Face-named float32 tensors) of an LLM, its EVF layers made dense (language FFN)."""
    config = llm.config
    hf_names = {ours: hf for hf, ours in hf_llm_name_table(config).items()}
    tensors = {}
    for name, param in llm.parameters_and_names():
        value = param.asnumpy().astype(np.float32)
        match = _EVF_PARAM.match(name)
        if match:
            if match.group(2) != "language_ffn":
                continue
            name = match.group(1) + match.group(3)
        tensors[hf_names.get(name, name)] = value
    table = hf_llm_name_table(config)
    missing = sorted(set(table) - set(tensors))
    extra = sorted(set(tensors) - set(table))
    if missing or extra:
        raise ConfigError(f"cannot export the LLM: missing {missing[:4]}, unexpected {extra[:4]}")
    return config, tensors


def as_release_internlm(config: LLMConfig, tensors: dict) -> dict:
    """Llama-named tensors -> the release's: o_proj biases dropped (they must be zero), inv_freq added."""
    mismatches = release_layout_mismatches(config)
    if mismatches:
        raise ConfigError("this LLM's layers differ between layers, but not as the Eve release's InternLM "
                          f"(PanGu-pi Pro) builds them, so no Hugging Face format holds it: {'; '.join(mismatches)}")
    out = {}
    inv_freq = rotary_inv_freq(config)
    for name, value in tensors.items():
        if name.endswith(".self_attn.o_proj.bias"):
            if np.any(value):
                raise ConfigError(f"{name} is not zero: the release's InternLM has no o_proj bias")
            continue
        out[name] = value
        if name.endswith(".self_attn.q_proj.weight"):
            out[name.replace(".q_proj.weight", ".rotary_emb.inv_freq")] = inv_freq
    return out


def export_hf_llm(llm, out: str, tokenizer=None) -> str:
    """Write `llm` (an eve-ms LLM cell, EVF layers allowed) as a Hugging Face Llama or the release's InternLM."""
    from eve_ms.convert.weights import save_safetensors

    config, tensors = dense_llm_tensors(llm)
    if config.is_uniform:
        hf_config = hf_config_from_llm(config)
    else:
        hf_config, tensors = internlm_config_from_llm(config), as_release_internlm(config, tensors)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as fh:
        json.dump(hf_config, fh, indent=2)
    save_safetensors(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
        add_bos_as_training(out)
    return out


def add_bos_as_training(folder: str) -> None:
    """Make the saved tokenizer start every encoding with its bos token, as eve-ms training and inference do.

    eve-ms puts <s> in front of every sequence itself (data.add_bos) and tokenizes text without special
    tokens; a Hugging Face user calls `tokenizer(text)`, which adds what the tokenizer's post-processor
    says. A tokenizer that already adds bos keeps its post-processor. Special-token strings inside a text
    are tokenized as text, as eve-ms does (`split_special_tokens`).
    """
    from tokenizers import Tokenizer, processors
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    path = os.path.join(folder, "tokenizer.json")
    if bos is None or bos_id is None or not os.path.isfile(path):
        return
    if tokenizer("a")["input_ids"][:1] != [bos_id]:
        backend = Tokenizer.from_file(path)
        template = processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                                 special_tokens=[(bos, bos_id)])
        existing = backend.post_processor
        backend.post_processor = template if existing is None else processors.Sequence([existing, template])
        backend.save(path)
    config_path = os.path.join(folder, "tokenizer_config.json")
    if os.path.isfile(config_path):  # Llama-style tokenizer classes rebuild the post-processor from this flag
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)
        config["add_bos_token"] = True
        config["split_special_tokens"] = True  # "<s>" written in a text stays text, as eve-ms tokenizes it
        with open(config_path, "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2)


def convert_eve_to_hf_llm(src: str, out: str) -> str:
    """An eve-ms checkpoint directory (or an LLM component folder) -> a Hugging Face folder."""
    from eve_ms.convert.hf_to_eve import find_tokenizer, is_llm_dir, load_llm

    if is_llm_dir(src):
        return export_hf_llm(load_llm(src), out, find_tokenizer(src))
    from eve_ms.checkpoint_dir import load_eve_checkpoint

    model, _, tokenizer = load_eve_checkpoint(src)
    return export_hf_llm(model.llm, out, tokenizer)
