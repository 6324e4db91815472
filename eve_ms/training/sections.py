"""The sections of an Eve stage's run yaml that its task reads (`model`, `task_options`, `data`), parsed and
checked once, when the yaml loads (`eve_ms.training.config.check_runnable` keeps them as
`TrainConfig.task_sections`), before any tokenizer, data or graph work; `eve_ms.training.stages` builds the
stage from them. This module reads configuration only: it imports no model, trainer or framework code, so
loading a yaml does not import the training stack (and `training.config` -> `sections` is no import cycle)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar

from eve_ms.checkpoint_dir import CONFIG_FILE
from eve_ms.config import ConfigError, EveConfig, EVFConfig, from_dict, load_eve_config, run_model_config, to_dict
from eve_ms.data.config import DataConfig

if TYPE_CHECKING:  # type-only: the run config that holds these sections
    from eve_ms.training.config import TrainConfig

# Model config sections a stage builds anew, so they may differ from its start checkpoint's
# model_config.yaml: EVF (stage 3 turns it on; before it, the section only travels along) and
# stage 1's adapter (it starts from random). Every other field describes the loaded weights.
STAGE_MAY_CHANGE = {0: ("evf",), 1: ("evf", "adapter"), 2: ("evf",), 3: ("evf",)}
INIT_ONLY_FIELDS = ("llm.embedding_init_std",)  # how random weights start: nothing about loaded ones


@dataclass
class StageOptions:
    """`task_options` of an Eve stage run."""

    # Keys older yamls may hold: key -> (value that loads as if absent, what to write instead).
    REMOVED_KEYS: ClassVar[dict] = {
        "moe": (False, "the MoE x2top1 ablation is a model setting now: write model.model_config.evf.mode: moe "
                       "instead of task_options.moe: true"),
        "router_init_std": (EVFConfig.router_init_std, "the routers' initial std lives with the router now: "
                                                       "write it as model.model_config.evf.router_init_std"),
    }

    tokenizer_vocab_size: int = 0  # > 0: train a BPE of this size when no tokenizer is given
    tokenizer_corpus: list = field(default_factory=list)  # more LLaVA files whose texts the BPE learns


# --------------------------------------------------------------------------- config sections


@dataclass
class StageSections:
    """The sections of a run yaml the stage task reads, parsed and checked once: when the yaml loads
    (`training.config.check_runnable` keeps them as `TrainConfig.task_sections`), before any tokenizer,
    data or graph work; `build_stage` and `build_stage_model` read them from there."""

    model: EveConfig
    options: StageOptions
    data: DataConfig


def stage_sections(config: TrainConfig) -> StageSections:
    """Parse and check the model, task_options and data sections of a stage run (even those the stage
    does not use); errors name the key and the file."""
    options = stage_options(config)
    eve = model_config(config)
    return StageSections(model=eve, options=options, data=data_config(config, eve))


def sections_of(config: TrainConfig) -> StageSections:
    """The sections parsed when the yaml loaded; parsed now for a config built without `check_runnable`."""
    if isinstance(config.task_sections, StageSections):
        return config.task_sections
    return stage_sections(config)


def stage_options(config: TrainConfig) -> StageOptions:
    return from_dict(StageOptions, config.task_options, config.source, "task_options")


def model_config(config: TrainConfig) -> EveConfig:
    """The EveConfig this stage trains, from the yaml's `model` section (EVF as the stage needs it)."""
    eve = run_model_config(config.model, config.source)
    _check_start_architecture(config, eve)
    if config.stage == 3:
        if not eve.evf.enabled:
            raise ConfigError(f"stage 3 needs model.model_config.evf.enabled: true in {config.source}")
        if eve.evf.mode == "language_only":
            raise ConfigError(
                f"stage 3 cannot train with evf.mode language_only (the router is unused) in {config.source}"
            )
    elif eve.evf.enabled:
        raise ConfigError(
            f"stage {config.stage} trains a dense LLM: set model.model_config.evf.enabled: false in {config.source} "
            "(stage 3 turns FFNs into EVF layers)"
        )
    return eve


def start_model_config(load_checkpoint: str | None) -> tuple[str | None, EveConfig | None]:
    """(path, config) of the start checkpoint's model_config.yaml; (None, None) when it has none (yet)."""
    if not load_checkpoint:
        return None, None
    folder = load_checkpoint if os.path.isdir(load_checkpoint) else os.path.dirname(load_checkpoint)
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        return None, None
    return path, load_eve_config(path)


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_start_architecture(config: TrainConfig, eve: EveConfig) -> None:
    """The start checkpoint's model_config.yaml is the source of the architecture: a run yaml that says
    otherwise on any field (but those the stage may change) is an error naming each field and both values."""
    path, start = start_model_config(config.load_checkpoint)
    if start is None:
        return
    changeable = STAGE_MAY_CHANGE.get(config.stage, ())
    ours, theirs = _leaves(to_dict(eve)), _leaves(to_dict(start))
    differ = [
        key for key in sorted(set(ours) | set(theirs))
        if ours.get(key) != theirs.get(key) and key.split(".")[0] not in changeable and key not in INIT_ONLY_FIELDS
    ]
    if differ:
        listed = "; ".join(f"model.model_config.{key} is {ours.get(key)!r} in {config.source} but "
                           f"{theirs.get(key)!r} in {path}" for key in differ)
        raise ConfigError(
            f"{listed}: the start checkpoint's weights were built with its model_config.yaml; "
            "set the run yaml's value(s) to the checkpoint's"
        )


def data_config(config: TrainConfig, eve: EveConfig) -> DataConfig:
    data = from_dict(DataConfig, config.data, config.source, "data")
    given = (config.data or {}).get("batch_size")
    if given is not None and given != config.micro_batch_size:
        # the trainer owns the micro batch: a second number that silently lost would mislead
        raise ConfigError(
            f"data.batch_size={given} disagrees with runner_config.batch_size={config.micro_batch_size} (the micro "
            f"batch per rank the trainer uses) in {config.source}: delete data.batch_size"
        )
    data = replace(data, batch_size=config.micro_batch_size)
    if data.max_length > eve.llm.max_position_embeddings:
        raise ConfigError(
            f"data.max_length={data.max_length} exceeds model llm.max_position_embeddings="
            f"{eve.llm.max_position_embeddings} in {config.source}"
        )
    if data.max_length <= eve.num_image_tokens:
        raise ConfigError(
            f"data.max_length={data.max_length} leaves no room for text after the {eve.num_image_tokens} image tokens "
            f"in {config.source}"
        )
    return data
