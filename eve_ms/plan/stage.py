"""What a run yaml asks of one device: the model, what trains, the step's shape and the trainer options.

Read from the same yaml `eve-ms train` reads (`TrainConfig`), without MindSpore: the model section by
`eve_ms.config.run_model_config` (the parser the stages use), the trainable parts as the table of
`eve_ms.training.trainable` sets them, LoRA targets as `stages.lora_targets` resolves `target_modules: null`
(every nn.Dense of the LLM but lm_head).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from typing import Optional

from eve_ms.config import ConfigError, EveConfig, run_model_config
from eve_ms.plan.inventory import Dense
from eve_ms.training.config import TrainConfig

COMPUTE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class StageSpec:
    """One stage's run as the planner sees it (everything a plan depends on)."""

    stage: int
    model: EveConfig
    micro_batch: int
    grad_accum: int
    seq_len: int  # padded tokens per sample in the step planned
    compute_dtype: str
    lora_rank: int = 0
    lora_dropout: float = 0.0
    lora_targets: Optional[object] = None  # None: every decoder nn.Dense; list of names; a regex string
    moe: bool = False  # stage 3's MoE x2top1 ablation: language FFNs train too
    recompute_layers: int = 0  # first N decoder layers recomputed (recompute_config.recompute)
    optimizer_parallel: bool = False  # parallel.enable_parallel_optimizer
    data_parallel: Optional[int] = None
    fused_attention: bool = False  # flash attention (issue 26's Ascend path): no S x S tensors kept
    source: str = "<config>"
    notes: list = field(default_factory=list)

    @property
    def bytes_per_element(self) -> int:
        return COMPUTE_BYTES[self.compute_dtype]

    def with_changes(self, **changes) -> "StageSpec":
        return replace(self, notes=list(self.notes), **changes)

    # ----------------------------------------------------------------- what trains

    def lora_applies(self, dense: Dense) -> bool:
        """Whether stage 2's LoRA wraps `dense` (MindFormers matches `target_modules` against child names)."""
        if self.stage != 2 or dense.part not in ("llm", "lm_head") or self.lora_rank <= 0:
            return False
        name = dense.role.rsplit(".", 1)[-1]
        targets = self.lora_targets
        if targets is None:  # the stages' default: every nn.Dense of the decoder layers, not lm_head
            return dense.part == "llm"
        if isinstance(targets, str):
            return re.match(targets, name) is not None
        return any(re.fullmatch(str(t), name) for t in targets)

    def dense_trains(self, dense: Dense) -> bool:
        """Whether the base weight of `dense` trains (LoRA factors are separate, see `lora_applies`)."""
        if self.stage == 0:
            return dense.part in ("llm", "lm_head")
        if self.stage in (1, 2):
            return dense.part == "adapter"
        if self.stage == 3:
            return dense.expert == "vision" or dense.role == "router" or (self.moe and dense.expert == "language")
        return False

    @property
    def adapter_trains(self) -> bool:
        return self.stage in (1, 2)

    @property
    def llm_norms_and_embeddings_train(self) -> bool:
        return self.stage == 0


def stage_spec(config: TrainConfig, seq_len: Optional[int] = None) -> StageSpec:
    """The `StageSpec` of a loaded run yaml; `seq_len` None: the data section's max_length (the largest step)."""
    model = run_model_config(config.model, config.source)
    moe = model.evf.mode == "moe"  # the one switch of the MoE x2top1 ablation
    if config.stage == 3 and not model.evf.enabled:
        raise ConfigError(f"stage 3 needs model.model_config.evf.enabled: true in {config.source}")
    if config.stage != 3 and model.evf.enabled:
        model = copy.deepcopy(model)
        model.evf.enabled = False
    max_length = int((config.data or {}).get("max_length", model.llm.max_position_embeddings))
    length = seq_len or max_length
    if length <= model.num_image_tokens:
        raise ConfigError(f"sequence length {length} leaves no room for text after {model.num_image_tokens} "
                          f"image tokens ({config.source})")
    recompute = getattr(config, "recompute_config", None)
    parallel = getattr(config, "parallel", None)
    return StageSpec(
        stage=config.stage, model=model, micro_batch=config.micro_batch_size, grad_accum=config.grad_accum,
        seq_len=length, compute_dtype=config.runner_wrapper.compute_dtype,
        lora_rank=config.pet_config.lora_rank if config.stage == 2 else 0,
        lora_dropout=config.pet_config.lora_dropout, lora_targets=config.pet_config.target_modules, moe=moe,
        recompute_layers=recompute.layers(model.llm.num_layers) if recompute is not None else 0,
        optimizer_parallel=bool(parallel.enable_parallel_optimizer) if parallel is not None else False,
        data_parallel=config.parallel_config.data_parallel, source=config.source,
    )
