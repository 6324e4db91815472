"""Stage 2 -> stage 3: a dense LLM becomes an LLM with EVF layers, and the stage-3 freezing.

`convert_dense_to_evf` builds the LLM with `evf_config` enabled and copies every weight of the
dense one; in each EVF layer both the language FFN and the vision FFN receive exact copies of
that layer's dense FFN (DESIGN section 2), so at conversion the language-only path is the dense
model bit for bit, and so is the multimodal path (combine `unit`) whenever nothing is dropped.

The router starts small and random (normal, std 0.02, from a seeded numpy generator), not at
zero: with zero weights P = 0.5 for every token, so gbpr and moe send every token to the
language expert (argmax ties go to expert 0) and drop the overflow by token position, and
img_gbpr's priorities S are all tied, so which tokens overflow is decided by their position
alone. A small random router keeps the routing content-dependent from the first step while
P stays close to 0.5. `router_init_std=0` gives the zero router anyway.
"""
from __future__ import annotations

import re

import mindspore as ms
import numpy as np

from eve_ms.config import EVFConfig
from eve_ms.models.evf import ROUTER_INIT_STD
from eve_ms.models.llm import LLM

_EXPERT_PARAM = re.compile(r"^(model\.layers\.\d+\.mlp)\.(?:language_ffn|vision_ffn)\.(.+)$")
_ROUTER_PARAM = re.compile(r"^model\.layers\.\d+\.mlp\.router\.weight$")
# what stage 3 trains (DESIGN section 2); the moe ablation trains the language FFN too
_STAGE3_TRAINABLE = re.compile(r"\.mlp\.(?:vision_ffn|router)\.")
_MOE_TRAINABLE = re.compile(r"\.mlp\.(?:vision_ffn|language_ffn|router)\.")


def dense_source_name(evf_param_name: str) -> str | None:
    """The dense LLM's parameter an EVF-model parameter is copied from; None for a router."""
    if _ROUTER_PARAM.match(evf_param_name):
        return None
    match = _EXPERT_PARAM.match(evf_param_name)
    if match:
        return f"{match.group(1)}.{match.group(2)}"
    return evf_param_name


def convert_dense_to_evf(dense_llm: LLM, evf_config: EVFConfig, router_init_std: float = ROUTER_INIT_STD,
                         seed: int = 0) -> LLM:
    """A new LLM with EVF layers where `evf_config` says, holding copies of `dense_llm`'s weights."""
    if not evf_config.enabled:
        raise ValueError("convert_dense_to_evf needs an evf_config with enabled: true")
    if dense_llm.num_evf_layers:
        raise ValueError("convert_dense_to_evf expects a dense LLM, but this one already has EVF layers")
    if router_init_std < 0:
        raise ValueError(f"router_init_std must be >= 0, got {router_init_std}")
    dense = dict(dense_llm.parameters_and_names())
    evf_llm = LLM(dense_llm.config, evf_config)
    rng = np.random.default_rng(seed)
    copied = set()
    for name, param in evf_llm.parameters_and_names():
        source = dense_source_name(name)
        if source is None:
            weight = rng.normal(0.0, router_init_std, param.shape) if router_init_std else np.zeros(param.shape)
            param.set_data(ms.Tensor(weight.astype(np.float32), param.dtype))
            continue
        if source not in dense:
            raise ValueError(f"EVF model parameter {name!r} has no source {source!r} in the dense LLM")
        if tuple(dense[source].shape) != tuple(param.shape):
            raise ValueError(f"shape mismatch copying {source!r} {dense[source].shape} into {name!r} {param.shape}")
        param.set_data(dense[source].value().copy())
        copied.add(source)
    missing = sorted(set(dense) - copied)
    if missing:
        raise ValueError(f"dense LLM parameters not copied into the EVF model: {missing}")
    return evf_llm


def freeze_for_stage3(evf_llm: LLM, train_language_ffn: bool = False) -> list[str]:
    """Leave trainable only every EVF layer's vision FFN and router (stage 3); also the language
    FFN with `train_language_ffn` (the moe ablation). Returns the trainable parameter names."""
    if not evf_llm.num_evf_layers:
        raise ValueError("freeze_for_stage3 needs an LLM with EVF layers")
    pattern = _MOE_TRAINABLE if train_language_ffn else _STAGE3_TRAINABLE
    trainable = []
    for name, param in evf_llm.parameters_and_names():
        param.requires_grad = bool(pattern.search(name))
        if param.requires_grad:
            trainable.append(name)
    return trainable
