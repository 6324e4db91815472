"""`TrainConfig`: everything a training run reads from its yaml, in MindFormers' layout.

A run yaml keeps MindFormers' section names where MindFormers has one, so
`mindformers.tools.register.MindFormerConfig(path)` loads it (it drops the sections it
does not know with a warning); the Eve-specific parts are top-level sections of their own.
Unknown keys are errors naming the key and the file.

    task: eve_ms.training.stages:build_stage  # "module:function" or "path/to/file.py:function"
    stage: 1                      # 0 LLM pretraining (demo) | 1 adapter | 2 adapter + LoRA | 3 EVF (read by the task)
    seed: 0
    output_dir: ./output/stage1   # log, checkpoints, final weights, plots
    run_mode: train
    load_checkpoint: null         # the previous stage's weights (read by the task)
    resume_training: false        # same as `eve-ms train --resume`
    context:                      # mindspore.set_context
      device_target: null         # CPU | GPU | Ascend; null: $EVE_DEVICE_TARGET, else CPU
      mode: 0                     # 0 / graph | 1 / pynative
      runtime_num_threads: null   # CPU threads; null: min(cores, 8)
    runner_config:
      epochs: 1
      batch_size: 4               # micro batch per data-parallel rank
      gradient_accumulation_steps: 1
      stop_step: 0                # > 0: stop after this step (the lr schedule still spans the run)
    parallel_config:
      data_parallel: null         # null: the launcher's world size; else must equal it
    parallel:                     # MindFormers' `parallel` section (mindspore.set_auto_parallel_context)
      enable_parallel_optimizer: false  # MindSpore's optimizer parallel in data_parallel mode (Ascend only):
                                  # rank r updates its share of the weights and broadcasts them; the AdamW state
                                  # is not divided (every rank allocates both moments of every weight)
    recompute_config:             # MindFormers' section name
      recompute: false            # true: every decoder layer (MindSpore Cell.recompute()); N: the first N layers
    optimizer:                    # AdamW (PyTorch's), see eve_ms.training.optim
      type: AdamW
      fused: true                 # MindSpore's fused AdamWeightDecay kernel; false: mindformers.core.optim.AdamW
      betas: [0.9, 0.95]
      eps: 1.0e-8
      weight_decay: 0.0
    lr_schedule:                  # a MindFormers lr schedule, built by its registry
      type: CosineWithWarmUpLR
      learning_rate: 1.0e-3
      warmup_ratio: 0.03
      lr_end: 0.0
      warmup_lr_init: 0.0
      total_steps: -1             # the run's length; -1: epochs x steps per epoch of the data
    runner_wrapper:               # the train step (eve_ms.training.trainer)
      type: EveTrainOneStepCell
      compute_dtype: float32      # float32 | float16 | bfloat16 (GPU/Ascend; CPU trains in float32 only)
      amp_level: O2               # mindspore.amp level for float16/bfloat16: O2 | O3 | auto
      use_clip_grad: true
      max_grad_norm: 1.0
      scale_sense:                # float16 only; Dynamic: an overflow skips the step, Fixed: an error
        type: DynamicLossScaleUpdateCell   # or FixedLossScaleUpdateCell
        loss_scale_value: 65536
        scale_factor: 2
        scale_window: 1000
    checkpoint:
      save_checkpoint_steps: 100  # also saved at the last step
      keep_checkpoint_max: 3
    logging:
      progress_bar: true
      plot_at_end: true           # PNGs of the JSONL log when the run ends
      tensorboard: true           # TensorBoard event files of every step beside the JSONL log
    health:                       # training health (eve_ms.training.trainer.HealthMonitor)
      stall_steps: 10             # warn when the loss is constant and the grad norm 0 this many steps (0: off)
      stop_on_stall: false        # true: then stop the run with an error
    pet_config:                   # LoRA of stage 2 (mindformers.pet), read by the task
      pet_type: lora
      lora_rank: 8
      lora_alpha: 16
      lora_dropout: 0.05
      target_modules: null        # null: every nn.Dense of the LLM (the Eve stages leave out lm_head); or a list of names / a regex
    model: {...}                  # EveConfig (eve_ms.config), read by the task
    data: {...}                   # the data section (eve_ms.data), read by the task
    task_options: {}              # free-form options of a custom task

Every section is checked when the yaml loads (`load_train_config`), each key by the dataclass that
owns it, before any tokenizer, data or graph work; the Eve stages' task also checks its model,
data and task_options sections then, even those the stage does not use (`sections.stage_sections`, parsed once),
and the compute dtype against the run's device. Errors are `ConfigError`s naming the key and the file.

Global batch = runner_config.batch_size x gradient_accumulation_steps x data-parallel size.
A file may inherit from others with MindFormers' `base_config: [file, ...]` (see
`eve_ms.config.read_yaml`); the config text kept in checkpoints is then the resolved one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import yaml

from eve_ms.config import ConfigError, from_dict, read_yaml
from eve_ms.training.trainable import STAGE_NAMES

DEFAULT_TASK = "eve_ms.training.stages:build_stage"
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")
AMP_LEVELS = ("O2", "O3", "auto")
# Compute dtypes each device target trains in. CPU: float32 only. MindSpore 2.9 has no CPU
# bfloat16 matmul, and float16 training of the Eve network fails at graph compile ("MatMul
# Float32 vs Float16"), after the tokenizer and data are built: so both are config errors at load.
SUPPORTED_COMPUTE_DTYPES = {
    "CPU": ("float32",),
    "GPU": ("float32", "float16", "bfloat16"),
    "Ascend": ("float32", "float16", "bfloat16"),
}


@dataclass
class ContextConfig:
    device_target: Optional[str] = None
    mode: Union[int, str] = 0
    runtime_num_threads: Optional[int] = None

    def __post_init__(self):
        self.mode_name  # noqa: B018 - raises on a bad mode
        self.device  # noqa: B018 - raises on an unknown device target

    @property
    def mode_name(self) -> str:
        names = {0: "graph", 1: "pynative", "graph": "graph", "pynative": "pynative"}
        if self.mode not in names:
            raise ConfigError(f"context.mode must be 0 (graph) or 1 (pynative), got {self.mode!r}")
        return names[self.mode]

    @property
    def device(self) -> str:
        """The device target the run will use: device_target, else $EVE_DEVICE_TARGET, else CPU."""
        from eve_ms.runtime import resolve_device_target

        try:
            return resolve_device_target(self.device_target)
        except ValueError as err:
            raise ConfigError(f"context.device_target: {err}") from None


def _at_least(section: str, values: dict, low: int) -> None:
    for key, value in values.items():
        if value < low:
            raise ConfigError(f"{section}.{key} must be at least {low}, got {value}")


@dataclass
class RunnerConfig:
    epochs: int = 1
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    stop_step: int = 0

    def __post_init__(self):
        _at_least("runner_config", {"epochs": self.epochs, "batch_size": self.batch_size,
                                    "gradient_accumulation_steps": self.gradient_accumulation_steps}, 1)
        _at_least("runner_config", {"stop_step": self.stop_step}, 0)


@dataclass
class ParallelConfig:
    data_parallel: Optional[int] = None


@dataclass
class ParallelSettings:
    """MindFormers' `parallel` section (the keys of mindspore.set_auto_parallel_context eve-ms uses)."""

    enable_parallel_optimizer: bool = False


@dataclass
class RecomputeConfig:
    """MindFormers' `recompute_config`: `recompute` true (every decoder layer), false, or N (the first N layers)."""

    recompute: Union[bool, int] = False

    def __post_init__(self):
        if not isinstance(self.recompute, (bool, int)) or (not isinstance(self.recompute, bool) and self.recompute < 0):
            raise ConfigError(f"recompute_config.recompute must be true, false or a layer count >= 0, "
                              f"got {self.recompute!r}")

    def layers(self, num_layers: int) -> int:
        """How many decoder layers, of `num_layers`, are recomputed."""
        if isinstance(self.recompute, bool):
            return num_layers if self.recompute else 0
        return min(int(self.recompute), num_layers)


@dataclass
class OptimizerConfig:
    type: str = "AdamW"
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.0
    fused: bool = True

    def __post_init__(self):
        if self.type != "AdamW":
            raise ConfigError(f"optimizer.type must be AdamW, got {self.type!r}")
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 < float(b) < 1.0 for b in self.betas):
            raise ConfigError(f"optimizer.betas must be two numbers in (0, 1), got {self.betas!r}")


@dataclass
class LRScheduleConfig:
    type: str = "CosineWithWarmUpLR"
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.03
    lr_end: float = 0.0
    warmup_lr_init: float = 0.0
    total_steps: int = -1

    def __post_init__(self):
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ConfigError(f"lr_schedule.warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if self.total_steps == 0 or self.total_steps < -1:
            raise ConfigError(f"lr_schedule.total_steps must be -1 (from the data) or positive, got {self.total_steps}")


@dataclass
class LossScaleConfig:
    type: str = "DynamicLossScaleUpdateCell"  # or FixedLossScaleUpdateCell
    loss_scale_value: float = 65536.0
    scale_factor: int = 2
    scale_window: int = 1000

    def __post_init__(self):
        if self.type not in ("DynamicLossScaleUpdateCell", "FixedLossScaleUpdateCell"):
            raise ConfigError(
                "runner_wrapper.scale_sense.type must be DynamicLossScaleUpdateCell or FixedLossScaleUpdateCell, "
                f"got {self.type!r}"
            )
        if self.loss_scale_value < 1:
            raise ConfigError(f"runner_wrapper.scale_sense.loss_scale_value must be >= 1, got {self.loss_scale_value}")


@dataclass
class WrapperConfig:
    type: str = "EveTrainOneStepCell"
    compute_dtype: str = "float32"
    # O1 is left out: MindSpore implements it by rewriting the network's source into ./rewritten_network/.
    amp_level: str = "O2"
    use_clip_grad: bool = True
    max_grad_norm: float = 1.0
    scale_sense: LossScaleConfig = field(default_factory=LossScaleConfig)

    def __post_init__(self):
        if self.type != "EveTrainOneStepCell":
            raise ConfigError(f"runner_wrapper.type must be EveTrainOneStepCell, got {self.type!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"runner_wrapper.compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        if self.amp_level not in AMP_LEVELS:
            raise ConfigError(f"runner_wrapper.amp_level must be one of {AMP_LEVELS}, got {self.amp_level!r}")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"runner_wrapper.max_grad_norm must be positive, got {self.max_grad_norm}")

    def check_device(self, device: str) -> None:
        """A ConfigError when `device` cannot train in `compute_dtype` (SUPPORTED_COMPUTE_DTYPES)."""
        allowed = SUPPORTED_COMPUTE_DTYPES.get(device, ("float32",))
        if self.compute_dtype not in allowed:
            raise ConfigError(
                f"runner_wrapper.compute_dtype {self.compute_dtype} cannot train on device {device} "
                f"(it trains in {', '.join(allowed)}): set runner_wrapper.compute_dtype: float32, "
                "or context.device_target to a device that has it"
            )


@dataclass
class CheckpointConfig:
    save_checkpoint_steps: int = 100
    keep_checkpoint_max: int = 3

    def __post_init__(self):
        _at_least("checkpoint", {"save_checkpoint_steps": self.save_checkpoint_steps,
                                 "keep_checkpoint_max": self.keep_checkpoint_max}, 1)


@dataclass
class LoggingConfig:
    progress_bar: bool = True
    plot_at_end: bool = True
    tensorboard: bool = True  # TensorBoard event files beside train_log.jsonl (rank 0; `tensorboard --logdir OUT`)


@dataclass
class HealthConfig:
    """Training-health checks (eve_ms.training.trainer.HealthMonitor)."""

    stall_steps: int = 10  # warn when the loss is constant and the gradient norm 0 for this many steps (0: off)
    stop_on_stall: bool = False  # and then stop the run with an error

    def __post_init__(self):
        _at_least("health", {"stall_steps": self.stall_steps}, 0)


@dataclass
class LoraSettings:
    """MindFormers `pet_config` of a LoRA run (mindformers.pet.pet_config.LoraConfig names)."""

    pet_type: str = "lora"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    # None: every nn.Dense under the scope LoRA is applied to; a list: child names (each a
    # full-match regex, e.g. [q_proj, v_proj]); a string: MindFormers' own regex, as is.
    target_modules: Optional[Union[list, str]] = None

    def __post_init__(self):
        if self.pet_type != "lora":
            raise ConfigError(f"pet_config.pet_type must be lora, got {self.pet_type!r}")
        if self.lora_rank < 1:
            raise ConfigError(f"pet_config.lora_rank must be at least 1, got {self.lora_rank}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"pet_config.lora_alpha must be positive, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"pet_config.lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass
class TrainConfig:
    task: str = DEFAULT_TASK
    stage: int = 1
    seed: int = 0
    output_dir: str = "./output"
    run_mode: str = "train"
    load_checkpoint: Optional[str] = None
    resume_training: bool = False
    context: ContextConfig = field(default_factory=ContextConfig)
    runner_config: RunnerConfig = field(default_factory=RunnerConfig)
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    recompute_config: RecomputeConfig = field(default_factory=RecomputeConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    runner_wrapper: WrapperConfig = field(default_factory=WrapperConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    pet_config: LoraSettings = field(default_factory=LoraSettings)
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    task_options: dict = field(default_factory=dict)
    # Where the config came from and its text, kept in every checkpoint; not yaml keys.
    source: str = field(default="<dict>", repr=False, compare=False)
    yaml_text: str = field(default="", repr=False, compare=False)
    # The task's own sections (model, data, task_options) as its checker parsed them when the yaml loaded
    # (`check_runnable`; the Eve stages: `sections.StageSections`), so the task does not parse them again.
    task_sections: Any = field(default=None, repr=False, compare=False)

    def validate(self) -> None:
        """Checks across sections and of top-level keys; each section checks its own keys when built."""
        where = self.source
        if self.run_mode not in ("train", "finetune"):
            raise ConfigError(f"run_mode must be train or finetune, got {self.run_mode!r} in {where}")
        if self.stage not in STAGE_NAMES:
            *most, last = sorted(STAGE_NAMES)
            raise ConfigError(f"stage must be {', '.join(map(str, most))} or {last}, got {self.stage!r} in {where}")
        self._check_parallel_optimizer()
        if ":" not in self.task:
            raise ConfigError(f"task must be 'module:function' or 'file.py:function', got {self.task!r} in {where}")
        self._check_fused_ops()

    def _check_parallel_optimizer(self) -> None:
        """parallel.enable_parallel_optimizer needs the fused AdamW and the Ascend device target."""
        if not self.parallel.enable_parallel_optimizer:
            return
        from eve_ms.runtime import resolve_device_target

        device = resolve_device_target(self.context.device_target)
        if not self.optimizer.fused:
            raise ConfigError(f"parallel.enable_parallel_optimizer needs optimizer.fused: true (eve-ms's fused "
                              f"AdamW takes part in MindSpore's optimizer parallel) in {self.source}")
        if device != "Ascend":
            # measured with MindSpore 2.9 on CPU under msrun (2 workers): nn.Optimizer raises
            # RuntimeError 'parallel optimizer only supports "Ascend" in data parallel mode, but got CPU'
            raise ConfigError(
                f"parallel.enable_parallel_optimizer needs device target Ascend (this run's is {device}): "
                f"MindSpore's optimizer parallel in data_parallel mode runs on Ascend only; in {self.source}"
            )

    def _check_fused_ops(self) -> None:
        """llm.fused_ops: on needs the Ascend device target: say so now, before data or graph work."""
        section = self.model.get("model_config", self.model) if isinstance(self.model, dict) else None
        llm = section.get("llm") if isinstance(section, dict) else None
        if isinstance(llm, dict) and llm.get("fused_ops") == "on":
            from eve_ms.ops.fused import check_fused_ops_setting
            from eve_ms.runtime import resolve_device_target

            check_fused_ops_setting("on", resolve_device_target(self.context.device_target), self.source)

    @property
    def micro_batch_size(self) -> int:
        return self.runner_config.batch_size

    @property
    def grad_accum(self) -> int:
        return self.runner_config.gradient_accumulation_steps

    def global_batch_size(self, world_size: int) -> int:
        return self.micro_batch_size * self.grad_accum * world_size


def train_config_from_dict(data: dict, source: str = "<dict>", yaml_text: str = "") -> TrainConfig:
    """Build a `TrainConfig` strictly from a parsed run yaml."""
    data = dict(data or {})
    for key in ("source", "yaml_text", "task_sections"):
        if key in data:
            raise ConfigError(f"unknown key {key!r} in {source}")
    config = from_dict(TrainConfig, data, source)
    config.source = source
    config.yaml_text = yaml_text or yaml.safe_dump(data, sort_keys=False)
    config.validate()
    return config


def check_runnable(config: TrainConfig, device_target: Optional[str] = None) -> None:
    """What a config about to train must also satisfy (a config stored in a checkpoint need not):
    its compute dtype runs on the run's device (`device_target`, default the yaml's / this machine's), and the sections its task reads (model, data,
    task_options) are valid; the Eve stages' task checks them all, whatever the stage uses
    (`eve_ms.training.sections.stage_sections`, kept as `task_sections`), before any tokenizer, data or graph work."""
    try:
        config.runner_wrapper.check_device(device_target or config.context.device)
    except ConfigError as err:
        raise ConfigError(f"{config.source}: {err}") from None
    if config.task == DEFAULT_TASK:
        from eve_ms.training.sections import stage_sections

        config.task_sections = stage_sections(config)


def load_train_config(path: str | os.PathLike, device_target: Optional[str] = None) -> TrainConfig:
    """Load the run yaml at `path` (relative paths inside stay relative to the working directory).

    `device_target`: the device the run is checked for when it is not this one (`eve-ms plan` sizes runs
    for Ascend or GPU devices from any machine)."""
    path = os.fspath(path)
    raw = read_yaml(path)
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    own = yaml.safe_load(text)
    if isinstance(own, dict) and "base_config" in own:  # keep a self-contained text
        text = f"# {path} with its base_config resolved\n" + yaml.safe_dump(raw, sort_keys=False)
    config = train_config_from_dict(raw, path, text)
    check_runnable(config, device_target)
    return config
