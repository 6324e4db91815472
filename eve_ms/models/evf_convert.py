"""Stage 2 -> stage 3: the weights of a dense LLM become those of an LLM with EVF layers.

`convert_dense_to_evf` builds the LLM with `evf_config` enabled and copies every weight of the
dense one; in each EVF layer both the language FFN and the vision FFN receive exact copies of
that layer's dense FFN (DESIGN section 2), so at conversion the language-only path is the dense
model bit for bit, and so is the multimodal path (combine `unit`) whenever nothing is dropped.

The router starts small and random (normal, std 0.02, from a seeded numpy generator), not at
zero: with zero weights P = 0.5 for every token, so gbpr and moe send every token to the
language expert (argmax ties go to expert 0) and drop the overflow by token position, and
img_gbpr's priorities S are all tied, so which tokens overflow is decided by their position
alone. A small random router keeps the routing content-dependent from the first step while
P stays close to 0.5. `evf.router_init_std: 0` gives the zero router anyway.

`evf_initial_values` is the mapping on plain arrays, for any model holding the LLM (stage 3 builds
its Eve model once and loads these values); `convert_dense_to_evf` applies it to a built LLM. What
stage 3 then trains is in `eve_ms.training.trainable`.
"""
from __future__ import annotations

import re

import mindspore as ms
import numpy as np

from eve_ms.config import EVFConfig
from eve_ms.models.llm import LLM

# EVF-model names of the two experts and of the router, with or without a scope before `model.` (`llm.` in Eve)
_EXPERT_PARAM = re.compile(r"^((?:.*\.)?model\.layers\.\d+\.mlp)\.(?:language_ffn|vision_ffn)\.(.+)$")
_ROUTER_PARAM = re.compile(r"^(?:.*\.)?model\.layers\.\d+\.mlp\.router\.weight$")


def dense_source_name(evf_param_name: str) -> str | None:
    """The dense LLM's parameter an EVF-model parameter is copied from; None for a router."""
    if _ROUTER_PARAM.match(evf_param_name):
        return None
    match = _EXPERT_PARAM.match(evf_param_name)
    if match:
        return f"{match.group(1)}.{match.group(2)}"
    return evf_param_name


def evf_initial_values(evf_params, dense: dict, router_init_std: float, seed: int = 0) -> dict:
    """Initial values of an EVF model's parameters, name -> array, from the dense model's `dense` arrays.

    `evf_params`: the EVF model's (name, shape) pairs in parameter order (the routers draw from one
    seeded generator in that order). Both experts of an EVF layer get the dense FFN's arrays, a router
    normal(0, `router_init_std`) (zeros for 0), every other parameter its own array. A parameter whose
    source `dense` lacks is left out, and a dense array no parameter took is kept under its own name,
    so a strict load of the result names the tensor at fault."""
    rng = np.random.default_rng(seed)
    values, copied = {}, set()
    for name, shape in evf_params:
        source = dense_source_name(name)
        if source is None:
            weight = rng.normal(0.0, router_init_std, tuple(shape)) if router_init_std else np.zeros(tuple(shape))
            values[name] = weight.astype(np.float32)
        elif source in dense:
            values[name] = dense[source]
            copied.add(source)
    values.update({name: value for name, value in dense.items() if name not in copied})
    return values


def convert_dense_to_evf(dense_llm: LLM, evf_config: EVFConfig, router_init_std: float | None = None,
                         seed: int = 0) -> LLM:
    """A new LLM with EVF layers where `evf_config` says, holding copies of `dense_llm`'s weights
    (`router_init_std` None: `evf_config.router_init_std`)."""
    if not evf_config.enabled:
        raise ValueError("convert_dense_to_evf needs an evf_config with enabled: true")
    if dense_llm.num_evf_layers:
        raise ValueError("convert_dense_to_evf expects a dense LLM, but this one already has EVF layers")
    std = evf_config.router_init_std if router_init_std is None else router_init_std
    if std < 0:
        raise ValueError(f"router_init_std must be >= 0, got {std}")
    dense = {name: param.value() for name, param in dense_llm.parameters_and_names()}
    evf_llm = LLM(dense_llm.config, evf_config)
    params = dict(evf_llm.parameters_and_names())
    values = evf_initial_values([(name, param.shape) for name, param in params.items()], dense, std, seed)
    unused = sorted(name for name in values if name not in params)
    if unused:
        raise ValueError(f"dense LLM parameters not copied into the EVF model: {unused}")
    for name, param in params.items():
        if name not in values:
            raise ValueError(f"EVF model parameter {name!r} has no source {dense_source_name(name)!r} in the dense LLM")
        value = values[name]
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(f"shape mismatch copying {dense_source_name(name)!r} {value.shape} into {name!r} "
                             f"{param.shape}")
        param.set_data(ms.Tensor(value, param.dtype) if isinstance(value, np.ndarray) else value.copy())
    return evf_llm
