"""An eve-ms checkpoint directory: what a stage writes and what chat, eval and the next stage read.

    DIR/model.safetensors     every weight under its eve_ms name (vision_tower.*, adapter.*, llm.*)
    DIR/model_config.yaml     the EveConfig that builds the model (bare model yaml)
    DIR/tokenizer/            optional: the tokenizer (tokenizer.json + its config files)

Weights are written atomically (temporary file, fsync, rename) by `training.checkpoint`.
"""
from __future__ import annotations

import os
import shutil

from eve_ms.config import ConfigError, EveConfig, load_eve_config, save_eve_config

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.yaml"
TOKENIZER_DIR = "tokenizer"


def save_eve_checkpoint(model, config: EveConfig, directory: str, tokenizer=None, metadata: dict | None = None) -> str:
    """Write model weights, its config and (optionally) the tokenizer into `directory`."""
    from eve_ms.training.checkpoint import save_weights

    os.makedirs(directory, exist_ok=True)
    save_eve_config(config, os.path.join(directory, CONFIG_FILE))
    if tokenizer is not None:
        target = os.path.join(directory, TOKENIZER_DIR)
        if isinstance(tokenizer, (str, os.PathLike)):
            if os.path.abspath(tokenizer) != os.path.abspath(target):
                shutil.copytree(tokenizer, target, dirs_exist_ok=True)
        else:
            tokenizer.save_pretrained(target)
    save_weights(model, os.path.join(directory, WEIGHTS_FILE), metadata=metadata)
    return directory


def read_eve_config(directory: str) -> EveConfig:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        raise ConfigError(f"{directory} is not an eve-ms checkpoint directory: {CONFIG_FILE} is missing")
    return load_eve_config(path)


MERGED_DIR = "merged"  # where stage 2 writes its LoRA-merged model


def check_not_lora(directory: str) -> None:
    """A ConfigError saying which folder to use when `directory` holds unmerged LoRA weights (stage 2's output)."""
    from eve_ms.training.checkpoint import read_header

    names, _, _ = read_header(os.path.join(directory, WEIGHTS_FILE))
    if not any("mindpet_delta_lora_" in name for name in names):
        return
    merged = os.path.join(directory, MERGED_DIR)
    if os.path.isfile(os.path.join(merged, WEIGHTS_FILE)):
        raise ConfigError(f"{directory} holds stage 2's unmerged LoRA weights; use {merged}{os.sep} "
                          "(the LoRA-merged model) instead")
    raise ConfigError(f"{directory} holds unmerged LoRA weights and has no {MERGED_DIR}{os.sep} folder (stage 2 "
                      "writes it when it finishes): give the LoRA-merged checkpoint instead")


def load_eve_checkpoint(directory: str, *, evf_mode: str | None = None, load_tokenizer: bool = True):
    """(model, config, tokenizer or None) from a checkpoint directory; missing/mismatched tensors are named."""
    from eve_ms.models.eve import EveForCausalLM
    from eve_ms.training.checkpoint import load_weights

    config = read_eve_config(directory)
    weights = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.exists(weights):
        raise ConfigError(f"{directory}: {WEIGHTS_FILE} is missing")
    check_not_lora(directory)
    model = EveForCausalLM(config)
    load_weights(model, weights, strict=True)
    if evf_mode is not None:
        model.set_evf_mode(evf_mode)
    model.set_train(False)
    tokenizer = None
    tok_dir = os.path.join(directory, TOKENIZER_DIR)
    if load_tokenizer and os.path.isdir(tok_dir):
        from eve_ms.data.tokenizer import load_tokenizer as _load_tokenizer

        tokenizer = _load_tokenizer(tok_dir)
    return model, config, tokenizer
