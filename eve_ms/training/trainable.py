"""What each Eve training stage trains (DESIGN section 2); every other weight is frozen.

The one table of it: the stage task (`stages.build_stage_model`) freezes by it, `freeze_for_stage3`
applies stage 3's rows to a bare LLM, and docs/design.md prints it. Entries are fnmatch globs over
`EveForCausalLM` parameter names (`*` also matches dots). No MindSpore import: the planner and the
docs read it without the model stack.

| stage | trains |
|---|---|
| 0 `llm_pretrain` (demo only) | every LLM weight |
| 1 `adapter` | the adapter |
| 2 `adapter_lora` | the adapter + MindFormers LoRA factors on the LLM |
| 3 `evf` | every EVF layer's vision FFN and router; with `evf.mode: moe` (the MoE x2top1 ablation) its language FFN too |
"""
from __future__ import annotations

import fnmatch

STAGE_NAMES = {0: "llm_pretrain", 1: "adapter", 2: "adapter_lora", 3: "evf"}  # the stages a run yaml's `stage` names
LORA_PARAM_GLOB = "*.mindpet_delta_lora_*"  # the factors mindpet's LoRADense adds (lora_a, lora_b)
LLM_SCOPE = "llm."  # where the LLM's parameters live in EveForCausalLM
_EVF_PART = LLM_SCOPE + "model.layers.*.mlp.{}.*"

TRAINABLE = {
    0: (LLM_SCOPE + "*",),
    1: ("adapter.*",),
    2: ("adapter.*", LORA_PARAM_GLOB),
    3: (_EVF_PART.format("vision_ffn"), _EVF_PART.format("router")),
}
MOE_ALSO_TRAINS = (_EVF_PART.format("language_ffn"),)  # stage 3 with evf.mode moe


def trainable_globs(stage: int, evf_mode: str = "multimodal") -> tuple:
    """The globs of the weights stage `stage` trains (`evf_mode` matters to stage 3 only)."""
    globs = TRAINABLE[stage]
    return globs + MOE_ALSO_TRAINS if stage == 3 and evf_mode == "moe" else globs


def freeze_all_but(network, globs, relative: bool = False) -> list[str]:
    """requires_grad=True exactly for parameters matching one of the globs; returns their names.

    Globs match `Parameter.name`, or with `relative` the name inside `network` (a sub-cell's view)."""
    named = network.parameters_and_names() if relative else ((p.name, p) for p in network.get_parameters())
    trainable = []
    for name, param in named:
        param.requires_grad = any(fnmatch.fnmatchcase(name, g) for g in globs)
        if param.requires_grad:
            trainable.append(name)
    if not trainable:
        raise ValueError(f"no parameter matches the trainable patterns {list(globs)}")
    return trainable


def freeze_for_stage3(evf_llm, train_language_ffn: bool = False) -> list[str]:
    """Stage 3's rows of the table applied to a bare LLM (names without the `llm.` scope): only the EVF
    layers' vision FFNs and routers train, and their language FFNs with `train_language_ffn` (moe)."""
    if not evf_llm.num_evf_layers:
        raise ValueError("freeze_for_stage3 needs an LLM with EVF layers")
    globs = trainable_globs(3, "moe" if train_language_ffn else "multimodal")
    return freeze_all_but(evf_llm, [g[len(LLM_SCOPE):] for g in globs], relative=True)
