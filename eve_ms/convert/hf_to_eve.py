"""Hugging Face LLMs and vision encoders -> eve-ms component folders and an initial Eve checkpoint.

Component folders hold one converted part, fast to load and checked once:

    LLM_DIR/model.safetensors     the LLM's tensors under their (Hugging Face) names
    LLM_DIR/llm_config.yaml       its LLMConfig
    LLM_DIR/tokenizer/            the tokenizer, when the source folder has one
    VISION_DIR/model.safetensors  the encoder's tensors under the eve-ms cell's names
    VISION_DIR/vision_config.yaml its VisionConfig (layers after its select_layer are not stored)

`assemble_eve` builds the stage-0/1 starting point of the paper's training: a full eve-ms
checkpoint directory (`eve_ms.checkpoint_dir`) with the converted vision tower and LLM, a
randomly initialised adapter (seeded) and EVF disabled. Its LLM and vision inputs may each be
a Hugging Face folder or a component folder.

LLM sources: model_type llama, mistral and internlm (the Eve release's PanGu-pi Pro LLM, or
upstream InternLM v1), all read by `eve_ms/convert/hf_llm.py`.
"""
from __future__ import annotations

import dataclasses
import os

import mindspore as ms
import yaml

from eve_ms.config import AdapterConfig, ConfigError, EveConfig, EVFConfig, LLMConfig, VisionConfig, from_dict
from eve_ms.convert.hf_llm import (INTERNLM_TYPES, llm_config_from_hf, load_hf_llm_weights, read_hf_config,
                                   with_internlm_o_proj_bias)
from eve_ms.convert.weights import load_state_dict

WEIGHTS_FILE = "model.safetensors"
LLM_CONFIG_FILE = "llm_config.yaml"
VISION_CONFIG_FILE = "vision_config.yaml"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


# --------------------------------------------------------------------------- LLM


def llm_config_from_any(hf: dict, source: str = "config.json") -> LLMConfig:
    """`LLMConfig` of a Llama, Mistral or InternLM config dict (`hf_llm.llm_config_from_hf`)."""
    return llm_config_from_hf(hf, source)


def _write_yaml(data: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)


def _read_component_config(path: str, cls, what: str):
    with open(path, encoding="utf-8") as fh:
        return from_dict(cls, yaml.safe_load(fh), path, what)


def is_llm_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, LLM_CONFIG_FILE))


def is_vision_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, VISION_CONFIG_FILE))


def load_llm(path: str):
    """The eve-ms LLM with its weights from a Hugging Face folder or an LLM component folder."""
    from eve_ms.models.llm import LLM
    from eve_ms.training.checkpoint import assign_tensors, read_safetensors

    path = os.fspath(path)
    if is_llm_dir(path):
        config = _read_component_config(os.path.join(path, LLM_CONFIG_FILE), LLMConfig, "llm")
        llm = LLM(config)
        tensors, _ = read_safetensors(os.path.join(path, WEIGHTS_FILE))
        assign_tensors(dict(llm.parameters_and_names()), tensors, path)
        return llm
    hf = read_hf_config(path)
    config = llm_config_from_any(hf, os.path.join(path, "config.json"))
    llm = LLM(config)
    state = load_state_dict(path)
    if hf.get("model_type") in INTERNLM_TYPES:
        state = with_internlm_o_proj_bias(state, config)
    load_hf_llm_weights(llm, state, path)
    return llm


def llm_tensors(llm) -> dict:
    """name -> float32 array of every LLM parameter (names relative to the LLM: Hugging Face's)."""
    return {name: param.astype(ms.float32).asnumpy() for name, param in llm.parameters_and_names()}


def save_llm_dir(llm, out: str, tokenizer=None) -> str:
    from eve_ms.training.checkpoint import write_safetensors

    os.makedirs(out, exist_ok=True)
    _write_yaml(dataclasses.asdict(llm.config), os.path.join(out, LLM_CONFIG_FILE))
    write_safetensors(os.path.join(out, WEIGHTS_FILE), llm_tensors(llm), {"kind": "llm"})
    if tokenizer is not None:
        tokenizer.save_pretrained(os.path.join(out, TOKENIZER_DIR))
    return out


def find_tokenizer(path: str):
    """The tokenizer stored with a Hugging Face or eve-ms folder, or None when it has none."""
    from eve_ms.data.tokenizer import load_tokenizer

    for folder in (os.path.join(path, TOKENIZER_DIR), path):
        if any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES):
            return load_tokenizer(folder)
    return None


def convert_hf_llm(src: str, out: str) -> str:
    """A Hugging Face LLM folder -> an LLM component folder (weights, llm_config.yaml, tokenizer)."""
    return save_llm_dir(load_llm(src), out, find_tokenizer(src))


# --------------------------------------------------------------------------- vision


def load_vision(path: str, select_layer: int | None = None, image_size: int | None = None):
    """A frozen encoder with its weights from a Hugging Face folder or a vision component folder.

    select_layer / image_size override the source's (a component folder keeps its own unless given).
    """
    from eve_ms.convert.hf_vision import load_hf_vision
    from eve_ms.models.vision import build_vision_encoder
    from eve_ms.training.checkpoint import assign_tensors, read_safetensors

    path = os.fspath(path)
    if not is_vision_dir(path):
        return load_hf_vision(path, select_layer=select_layer, image_size=image_size)
    config = _read_component_config(os.path.join(path, VISION_CONFIG_FILE), VisionConfig, "vision")
    if select_layer is not None or image_size is not None:
        fields = dataclasses.asdict(config)
        fields.update({k: v for k, v in (("select_layer", select_layer), ("image_size", image_size)) if v is not None})
        config = VisionConfig(**fields)
    encoder = build_vision_encoder(config)
    tensors, _ = read_safetensors(os.path.join(path, WEIGHTS_FILE))
    params = dict(encoder.parameters_and_names())
    # layers after select_layer are not built: their tensors are not needed
    assign_tensors(params, {k: v for k, v in tensors.items() if k in params}, path, strict=False)
    return encoder


def save_vision_dir(encoder, out: str) -> str:
    from eve_ms.training.checkpoint import write_safetensors

    os.makedirs(out, exist_ok=True)
    _write_yaml(dataclasses.asdict(encoder.config), os.path.join(out, VISION_CONFIG_FILE))
    tensors = {name: param.asnumpy() for name, param in encoder.parameters_and_names()}
    write_safetensors(os.path.join(out, WEIGHTS_FILE), tensors, {"kind": "vision"})
    return out


def convert_hf_vision(src: str, out: str, select_layer: int | None = None, image_size: int | None = None) -> str:
    """A Hugging Face SigLIP / CLIP / ResNet folder -> a vision component folder."""
    return save_vision_dir(load_vision(src, select_layer, image_size), out)


# --------------------------------------------------------------------------- a whole Eve model


def copy_into(model, prefix: str, tensors: dict, source: str) -> None:
    """Set `model`'s parameters `prefix + name` from `tensors[name]`, strictly (both ways)."""
    from eve_ms.training.checkpoint import assign_tensors

    params = {p.name[len(prefix):]: p for p in model.get_parameters() if p.name.startswith(prefix)}
    assign_tensors(params, tensors, source)


def assemble_eve(llm_source: str, vision_source: str, adapter: str = "ldp", out: str | None = None, *,
                 seed: int = 0, select_layer: int | None = None, image_size: int | None = None,
                 tokenizer: str | None = None):
    """An Eve model from a converted LLM and vision encoder with a fresh adapter; written to `out` if given.

    Returns (model, config, tokenizer or None). The tokenizer comes from `tokenizer` (a folder or
    tokenizer.json), else from the LLM folder; without one the checkpoint has no tokenizer/.
    """
    from eve_ms.checkpoint_dir import save_eve_checkpoint
    from eve_ms.data.tokenizer import load_tokenizer
    from eve_ms.models.eve import EveForCausalLM

    llm = load_llm(llm_source)
    encoder = load_vision(vision_source, select_layer, image_size)
    config = EveConfig(vision=encoder.config, adapter=AdapterConfig(type=adapter), llm=llm.config,
                       evf=EVFConfig(enabled=False))
    ms.set_seed(seed)  # the adapter's initial weights
    model = EveForCausalLM(config)
    copy_into(model, "llm.", llm_tensors(llm), llm_source)
    copy_into(model, "vision_tower.", {n: p.asnumpy() for n, p in encoder.parameters_and_names()}, vision_source)
    tok = load_tokenizer(tokenizer) if tokenizer else find_tokenizer(llm_source)
    if tok is not None and len(tok) > config.llm.vocab_size:
        raise ConfigError(f"the tokenizer has {len(tok)} tokens but the LLM's vocab_size is {config.llm.vocab_size}")
    if out is not None:
        save_eve_checkpoint(model, config, out, tokenizer=tok,
                            metadata={"converted_from": f"{llm_source} + {vision_source}"})
    return model, config, tok


__all__ = [
    "assemble_eve", "convert_hf_llm", "convert_hf_vision", "find_tokenizer", "llm_config_from_any", "load_llm",
    "load_vision", "save_llm_dir", "save_vision_dir",
]
