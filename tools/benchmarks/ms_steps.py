"""The eve-ms training step of each stage, as users run it: `EveForCausalLM` + the project's `Trainer`.

Stage set-up from the package's primitives (DESIGN section 2):
- stage 1: only the adapter trains (`freeze_all_but`);
- stage 2: MindFormers LoRA on every nn.Dense of the LLM (`apply_lora`), adapter + LoRA train;
- stage 3: EVF layers in alternate layers, only each EVF layer's vision FFN and router train
  (`freeze_for_stage3`; adapter frozen). The network is built with `evf.enabled`, which is the
  structure `convert_dense_to_evf` produces (it builds `LLM(config, evf_config)` and copies the
  dense weights in; the values do not change the step's cost, and the router starts random as there).

One `Trainer.train_step` = forward + backward graph, gradient-reduction graph, AdamW-update graph,
plus the trainer's per-step host work (target counting, loss / NaN checks): what `eve-ms train` runs.
"""
from __future__ import annotations

import tempfile
import time

from benchmarks.common import LEARNING_RATE, LORA, PRESETS, eve_config, shared, synthetic_batch

INPUT_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values")


def build_stage_network(preset: str, stage: int, seed: int = 0):
    """(network, EveConfig) of `stage` with the right parameters trainable."""
    import mindspore as ms

    from eve_ms.models.eve import EveForCausalLM
    from eve_ms.training.config import LoraSettings
    from eve_ms.training.lora import apply_lora
    from eve_ms.training.trainable import LORA_PARAM_GLOB, freeze_all_but

    ms.set_seed(seed)
    config = eve_config(preset, evf=stage == 3)
    network = EveForCausalLM(config)
    if stage == 1:
        freeze_all_but(network, ["adapter.*"])
    elif stage == 2:
        apply_lora(network, "llm", LoraSettings(**LORA))
        freeze_all_but(network, ["adapter.*", LORA_PARAM_GLOB])
    elif stage == 3:
        from eve_ms.training.trainable import freeze_for_stage3

        freeze_for_stage3(network.llm)
        for param in network.adapter.get_parameters():
            param.requires_grad = False
    else:
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    return network, config


class _FixedBatches:
    """The trainer's loader protocol over one repeated batch."""

    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        return iter([self.batch])

    def __len__(self):
        return 1

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class TrainerStep:
    """One `Trainer.train_step` per call, in the execution mode given at the call (graphs are cached per mode)."""

    def __init__(self, network, batch: dict, stage: int):
        from eve_ms.training.config import train_config_from_dict
        from eve_ms.training.trainer import Trainer, TrainTask

        self.output_dir = tempfile.TemporaryDirectory(prefix="eve_bench_")
        config = train_config_from_dict({
            "stage": stage,
            "output_dir": self.output_dir.name,
            "runner_config": {"batch_size": int(batch["input_ids"].shape[0])},
            "lr_schedule": {"learning_rate": LEARNING_RATE[stage], "total_steps": 100000},
            "logging": {"progress_bar": False, "plot_at_end": False},
            "pet_config": dict(LORA),
        })
        self.batch = {k: batch[k] for k in INPUT_KEYS}
        task = TrainTask(network=network, loader=_FixedBatches(self.batch), input_keys=INPUT_KEYS)
        self.trainer = Trainer(config, task, log=lambda *args, **kwargs: None)
        network.set_train(True)
        self.tokens = int(batch["input_ids"].size)
        self.samples = int(batch["input_ids"].shape[0])
        self.first_call_s = {}  # mode -> seconds of the first call (graph mode: includes compilation)

    def __call__(self, mode: str = "graph"):
        import mindspore as ms

        ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
        start = time.perf_counter()
        record = self.trainer.train_step([self.batch])
        self.first_call_s.setdefault(mode, time.perf_counter() - start)
        return record


def stage_step(preset: str, stage: int, seed: int = 0, batch_size: int | None = None) -> TrainerStep:
    """The run's eve-ms step for (preset, stage), built once (suites share it and its compiled graphs);
    `batch_size` None: the preset's."""
    spec = PRESETS[preset]
    batch_size = batch_size or spec["batch_size"]

    def build():
        network, config = build_stage_network(preset, stage, seed)
        return TrainerStep(network, synthetic_batch(config, batch_size, spec["seq_len"], seed), stage)

    return shared(("mindspore", preset, stage, seed, batch_size), build)
