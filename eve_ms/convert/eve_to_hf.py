"""The LLM of an eve-ms checkpoint -> a Hugging Face Llama folder (config.json + model.safetensors).

An EVF layer becomes the dense Llama MLP holding its language FFN (its router and vision FFN
are left out): the exported model is the checkpoint's language-only path, which for a stage-3
Eve is the stage-2 LLM the paper promises to preserve. PanGu-pi augmented shortcuts have no
Llama counterpart: layers whose shortcut is all zeros drop it, any other is an error.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np

from eve_ms.config import ConfigError, LLMConfig
from eve_ms.convert.hf_llm import hf_llm_name_table

_EVF_PARAM = re.compile(r"^(model\.layers\.\d+\.mlp)\.(language_ffn|vision_ffn|router)(\..+)$")


def hf_config_from_llm(config: LLMConfig) -> dict:
    """A transformers `LlamaConfig` dict describing the same model."""
    hf = {
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
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "torch_dtype": "float32",
    }
    return hf


def dense_llm_tensors(llm) -> tuple[LLMConfig, dict]:
    """(config without augmented shortcuts, Hugging Face-named float32 tensors) of an LLM, EVF layers made dense."""
    config = llm.config
    tensors = {}
    for name, param in llm.parameters_and_names():
        value = param.asnumpy().astype(np.float32)
        match = _EVF_PARAM.match(name)
        if match:
            if match.group(2) == "language_ffn":
                tensors[match.group(1) + match.group(3)] = value
            continue
        if name.endswith(".augmented_shortcut.weight"):
            if np.any(value):
                raise ConfigError(f"{name} is not zero: a PanGu-pi augmented shortcut has no Hugging Face Llama "
                                  "counterpart, so this LLM cannot be exported")
            continue
        tensors[name] = value
    dense = dataclasses.replace(config, augmented_shortcut_layers=[])
    table = hf_llm_name_table(dense)
    missing = sorted(set(table) - set(tensors))
    extra = sorted(set(tensors) - set(table))
    if missing or extra:
        raise ConfigError(f"cannot export the LLM: missing {missing[:4]}, unexpected {extra[:4]}")
    return dense, tensors


def export_hf_llm(llm, out: str, tokenizer=None) -> str:
    """Write `llm` (an eve-ms LLM cell, EVF layers allowed) as a Hugging Face Llama folder."""
    from eve_ms.convert.weights import save_safetensors

    config, tensors = dense_llm_tensors(llm)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as fh:
        json.dump(hf_config_from_llm(config), fh, indent=2)
    save_safetensors(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def convert_eve_to_hf_llm(src: str, out: str) -> str:
    """An eve-ms checkpoint directory (or an LLM component folder) -> a Hugging Face Llama folder."""
    from eve_ms.convert.hf_to_eve import find_tokenizer, is_llm_dir, load_llm

    if is_llm_dir(src):
        return export_hf_llm(load_llm(src), out, find_tokenizer(src))
    from eve_ms.checkpoint_dir import load_eve_checkpoint

    model, _, tokenizer = load_eve_checkpoint(src)
    return export_hf_llm(model.llm, out, tokenizer)
