"""The Eve training stages (DESIGN section 2) as one task builder: `task: eve_ms.training.stages:build_stage`.

| stage | init (`load_checkpoint`) | trains |
|---|---|---|
| 0 `llm_pretrain` (demo only) | optional: a whole Eve model; none = random init | every LLM weight, on text-only data |
| 1 `adapter` | `vision_tower.*` and `llm.*` (required); the adapter starts random | `adapter.*` |
| 2 `adapter_lora` | stage 1's output (every weight) | `adapter.*` + MindFormers LoRA on the LLM |
| 3 `evf` | stage 2's output, LoRA merged; both FFNs of an EVF layer copy its dense FFN | vision FFNs and routers |

What each stage trains is the table of `eve_ms.training.trainable` (every other weight is frozen).
Stage 3 builds its EVF model once and loads it from stage 2's weights: LoRA merged into the base
weights on the arrays (`lora.merge_lora_tensors`, with the `pet_config` stored in stage 2's weights),
both FFNs of every EVF layer copied from its dense FFN (`evf_convert.evf_initial_values`); a
checkpoint without LoRA tensors (e.g. stage 2's `merged/`) is taken as it is. The router starts
normal(0, `evf.router_init_std`), seeded by the run's `seed`, so a resumed run rebuilds the same
frozen model. `evf.mode: moe` in stage 3 trains the "MoE x2top1" ablation baseline (plain top-1
routing, language FFNs trainable too).

The start checkpoint's `model_config.yaml` (when `load_checkpoint` has one) is the source of the
architecture: a run yaml that differs from it on any model field is a ConfigError at load naming
each field and both values, except the sections the stage builds anew (`STAGE_MAY_CHANGE`: `evf`,
and stage 1's `adapter`).

`load_checkpoint` names an eve-ms checkpoint directory (its `model.safetensors` is read) or a
safetensors weights file. Loading is strict: a missing file names the path, a tensor the
network needs but the file lacks, one of the wrong shape, or one the network has no place for
is an error naming the tensor. Stage 1 ignores `adapter.*` tensors of its checkpoint (the
paper starts the adapter from random).

Stage options (`task_options`, strict, `StageOptions`): `tokenizer_vocab_size` / `tokenizer_corpus`
(train a BPE tokenizer when none is given, see `stage_data`). The former `moe` and `router_init_std`
are now `evf.mode: moe` and `evf.router_init_std`: an old yaml setting them fails at load saying so.

LoRA targets (stage 2): `pet_config.target_modules` null means every nn.Dense of the LLM's
decoder layers (attention q/k/v/o, FFN gate/gate2/up/down, attention shortcuts) and not `lm_head`,
as LLaVA's `find_all_linear_names` does; name `lm_head` in the list to adapt it too.

Output: every stage's `output_dir` is an eve-ms checkpoint directory (`eve_ms.checkpoint_dir`):
the trainer's final `model.safetensors` (all weights, the run's config text in its metadata),
plus `model_config.yaml` and `tokenizer/`, written by rank 0 when training ends. Stage 2's
`model.safetensors` holds the un-merged LoRA weights (the next stage merges them itself);
`output_dir/merged/` is the same model with LoRA merged into plain nn.Dense weights, the
directory that chat and evaluation load. Stage 3's `model_config.yaml` has EVF enabled.

Model, data and the rest come from the run yaml: `model` is MindFormers' section
(`model_config` with the `EveConfig` keys, `arch.type: EveForCausalLM`) or a bare EveConfig
mapping; `data` is `eve_ms.data.DataConfig` (its `batch_size` is `runner_config.batch_size`, which the
trainer owns: a `data.batch_size` that differs is an error at load). The three sections are parsed
and checked once, when the yaml loads (`eve_ms.training.sections`), and passed down from there.
"""
from __future__ import annotations

import functools
import os
from dataclasses import replace

import numpy as np

from eve_ms.checkpoint_dir import CONFIG_FILE, TOKENIZER_DIR, WEIGHTS_FILE, save_eve_checkpoint
from eve_ms.config import ConfigError, EveConfig, save_eve_config
from eve_ms.training import checkpoint as ckpt
from eve_ms.training.config import LoraSettings, TrainConfig
from eve_ms.training.distributed import DistInfo
from eve_ms.training.lora import apply_lora, lora_settings_of, merge_lora, merge_lora_tensors
# the sections are parsed where the yaml loads; the stage reads them (and tests reach them here too)
from eve_ms.training.sections import (STAGE_MAY_CHANGE, StageOptions, StageSections, data_config,  # noqa: F401
                                      model_config, sections_of, stage_sections)
from eve_ms.training.trainable import STAGE_NAMES, freeze_all_but, trainable_globs
from eve_ms.training.trainer import TrainTask

MERGED_DIR = "merged"  # stage 2: the LoRA-merged checkpoint directory inside output_dir
LORA_SCOPE = "llm"
LORA_EXCLUDED = ("lm_head",)  # left out of the default LoRA targets


# --------------------------------------------------------------------------- init weights


def init_weights_file(load_checkpoint: str | None, stage: int) -> str | None:
    """The weights file `load_checkpoint` names (a checkpoint directory or a file); errors name the path."""
    if not load_checkpoint:
        if stage == 0:
            return None
        previous = "converted vision tower + LLM weights" if stage == 1 else f"stage {stage - 1}'s output directory"
        raise ConfigError(f"stage {stage} initialises from load_checkpoint ({previous}), which is not set")
    if os.path.isdir(load_checkpoint):
        path = os.path.join(load_checkpoint, WEIGHTS_FILE)
        if not os.path.exists(path):
            raise ckpt.CheckpointError(f"load_checkpoint {load_checkpoint} has no {WEIGHTS_FILE}")
        return path
    if not os.path.exists(load_checkpoint):
        raise ckpt.CheckpointError(f"load_checkpoint not found: {load_checkpoint}")
    return load_checkpoint


def read_weights(path: str) -> dict:
    tensors, metadata = ckpt.read_safetensors(path)
    if metadata.get("kind") == ckpt.KIND_TRAIN_STATE:
        raise ckpt.CheckpointError(
            f"{path} is a training state (trainable parameters only); load_checkpoint must name the previous "
            "stage's output directory or its model.safetensors"
        )
    return tensors


def _assign(model, tensors: dict, source: str, prefixes: tuple = ("",), ignore: tuple = ()) -> None:
    """Strictly set the parameters whose names start with one of `prefixes` (file tensors under `ignore` skipped)."""
    params = {p.name: p for p in model.get_parameters() if p.name.startswith(prefixes)}
    kept = {name: value for name, value in tensors.items() if not (ignore and name.startswith(ignore))}
    ckpt.assign_tensors(params, kept, source, strict=True)


def has_lora(tensors_or_names) -> bool:
    return any(".mindpet_delta_lora_" in name for name in tensors_or_names)


def lora_targets(model, settings: LoraSettings) -> LoraSettings:
    """`settings` with target_modules null resolved to the stage default (every decoder nn.Dense, no lm_head)."""
    if settings.target_modules is not None:
        return settings
    from mindspore import nn

    llm = model.llm
    names = sorted({path.rsplit(".", 1)[-1] for path, cell in llm.cells_and_names()
                    if path and isinstance(cell, nn.Dense)} - set(LORA_EXCLUDED))
    return replace(settings, target_modules=names)


def load_lora_model(eve: EveConfig, weights_path: str, settings: LoraSettings | None = None):
    """A dense Eve model with stage 2's LoRA layers, loaded (un-merged) from a stage-2 weights file.

    `settings` None: the `pet_config` stored in the file (`lora.lora_settings_of`).
    """
    from eve_ms.models.eve import EveForCausalLM

    model = EveForCausalLM(eve)
    settings = lora_targets(model, settings or lora_settings_of(weights_path))
    apply_lora(model, LORA_SCOPE, settings)
    _assign(model, read_weights(weights_path), weights_path)
    return model


# --------------------------------------------------------------------------- models per stage


def build_stage_model(config: TrainConfig, log=print, sections: StageSections | None = None):
    """(model, eve_config): the stage's EveForCausalLM, built once, initialised as the stage says, frozen but for
    what the stage trains (`eve_ms.training.trainable`)."""
    from eve_ms.models.eve import EveForCausalLM

    stage = config.stage
    eve = (sections or sections_of(config)).model
    weights = init_weights_file(config.load_checkpoint, stage)
    model = EveForCausalLM(eve)
    if weights is None:
        log("stage 0: no load_checkpoint, the LLM starts from random weights")
    elif stage == 1:
        _assign(model, read_weights(weights), weights, prefixes=("vision_tower.", "llm."), ignore=("adapter.",))
    elif stage == 3:
        _assign(model, _stage3_values(model, eve, weights, config.seed, log), weights)
    else:
        _assign(model, read_weights(weights), weights)
    if stage == 2:
        apply_lora(model, LORA_SCOPE, lora_targets(model, config.pet_config))
    freeze_all_but(model, trainable_globs(stage, eve.evf.mode))
    return model, eve


def _stage3_values(model, eve: EveConfig, weights: str, seed: int, log) -> dict:
    """Stage 3's initial weights for `model` (EVF enabled) from stage 2's dense weights file: LoRA merged
    into the base weights first when the file has it (with the pet_config stored in it), then both FFNs
    of every EVF layer copied from its dense FFN and the routers drawn from `seed`."""
    from eve_ms.models.evf_convert import evf_initial_values

    tensors = read_weights(weights)
    if has_lora(tensors):
        tensors, merged = merge_lora_tensors(tensors, lora_settings_of(weights), weights)
        log(f"stage 3: merged {merged} LoRA layers of {weights} into the LLM")
    params = [(name, param.shape) for name, param in model.parameters_and_names()]
    return evf_initial_values(params, tensors, eve.evf.router_init_std, seed)


# --------------------------------------------------------------------------- the task


def _finish(eve: EveConfig, tokenizer, stage: int):
    """The trainer's end-of-run step: make output_dir (and stage 2's merged/) checkpoint directories."""

    def finish(trainer) -> None:
        if not trainer.dist.is_main:
            return
        out = trainer.config.output_dir
        save_eve_config(eve, os.path.join(out, CONFIG_FILE))
        tokenizer_dir = os.path.join(out, TOKENIZER_DIR)
        if os.path.abspath(tokenizer.name_or_path) != os.path.abspath(tokenizer_dir):
            tokenizer.save_pretrained(tokenizer_dir)
        if stage == 2:
            model = trainer.network.model
            merge_lora(model)
            save_eve_checkpoint(model, eve, os.path.join(out, MERGED_DIR), tokenizer=tokenizer_dir,
                                metadata={"step": str(trainer.step), "stage": "2", "lora_merged": "true"})
            trainer.log(f"stage 2: LoRA merged into {os.path.join(out, MERGED_DIR)} (for chat and evaluation)")

    return finish


def _trainable_summary(model) -> str:
    params = [p for p in model.get_parameters() if p.requires_grad]
    return f"{sum(int(np.prod(p.shape)) for p in params)} trainable weights in {len(params)} tensors"


def build_stage(config: TrainConfig, dist: DistInfo) -> TrainTask:
    """The trainer's task for stage `config.stage` (see the module docstring)."""
    from eve_ms.data.dataset import build_loader
    from eve_ms.training.eve_network import EveTrainNetwork, routing_record
    from eve_ms.training.stage_data import StageLoader, resolve_tokenizer

    log = print if dist.is_main else (lambda *a, **k: None)
    stage = config.stage
    sections = sections_of(config)
    eve, options, data = sections.model, sections.options, sections.data
    data.check_data_path()  # before the slow part: tokenizer, model
    weights = init_weights_file(config.load_checkpoint, stage)
    if weights and os.path.abspath(os.path.dirname(weights)) == os.path.abspath(config.output_dir):
        raise ConfigError(
            f"output_dir {config.output_dir} is the load_checkpoint folder: the run would overwrite its init"
        )

    tokenizer, tokenizer_source = resolve_tokenizer(data, config.load_checkpoint, config.output_dir,
                                                    options.tokenizer_vocab_size, options.tokenizer_corpus, dist, log)
    if len(tokenizer) > eve.llm.vocab_size:
        raise ConfigError(
            f"the tokenizer ({tokenizer_source}) has {len(tokenizer)} tokens but model llm.vocab_size is "
            f"{eve.llm.vocab_size} in {config.source}"
        )

    # The data is indexed before the model is built, so a bad data file is reported in seconds; it
    # reads only the image size/statistics and image token count, which the built model must share.
    loader = build_loader(data, eve, tokenizer, dist.rank, dist.world_size, config.grad_accum,
                          batch_size=config.micro_batch_size)
    model, eve = build_stage_model(config, log, sections)
    network = EveTrainNetwork(model)
    if stage == 0 and loader.index.has_image.any():
        raise ConfigError(
            f"stage 0 pretrains the LLM on text-only data, but {data.data_path} has "
            f"{int(loader.index.has_image.sum())} samples with an image"
        )
    log(f"stage {stage} ({STAGE_NAMES[stage]}): init from {weights or 'random weights'}; {_trainable_summary(model)}")
    evf_layers = model.llm.model.evf_layer_indices
    layer_names = tuple(f"layer_{i}" for i in evf_layers)
    return TrainTask(
        network=network,
        loader=StageLoader(loader, len(evf_layers), config.seed, dist),
        input_keys=network.input_keys,
        count_tokens=lambda batch: int(np.asarray(batch["attention_mask"]).sum()),
        stat_names=layer_names,
        stats_record=functools.partial(routing_record, layer_names=layer_names),
        eval_cells=("model.vision_tower",),
        layer_cells=tuple(f"model.llm.model.layers.{i}" for i in range(eve.llm.num_layers)),
        finish=_finish(eve, tokenizer, stage),
        metadata={"stage_name": STAGE_NAMES[stage]},
    )
