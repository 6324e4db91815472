"""The run yaml (strict, MindFormers-loadable) and `eve-ms plot` of a training log."""
import json
import textwrap

import pytest

from eve_ms.cli import main as cli_main
from eve_ms.config import ConfigError
from eve_ms.training.config import load_train_config

RUN_YAML = textwrap.dedent(
    """\
    task: eve_ms.training.stages:build_stage
    stage: 2
    seed: 7
    output_dir: ./output/stage2
    run_mode: train
    load_checkpoint: ./output/stage1/model.safetensors
    context: {device_target: CPU, mode: 0}
    runner_config: {epochs: 1, batch_size: 4, gradient_accumulation_steps: 8}
    parallel_config: {data_parallel: 4}
    optimizer: {type: AdamW, betas: [0.9, 0.95], eps: 1.0e-8, weight_decay: 0.0}
    lr_schedule: {type: CosineWithWarmUpLR, learning_rate: 2.0e-5, warmup_ratio: 0.03, total_steps: -1}
    runner_wrapper:
      type: EveTrainOneStepCell
      compute_dtype: float32
      use_clip_grad: true
      max_grad_norm: 1.0
      scale_sense: {type: DynamicLossScaleUpdateCell, loss_scale_value: 65536, scale_factor: 2, scale_window: 1000}
    checkpoint: {save_checkpoint_steps: 500, keep_checkpoint_max: 2}
    pet_config: {pet_type: lora, lora_rank: 128, lora_alpha: 256, lora_dropout: 0.05}
    model: {model_config: {type: EveConfig, vision: {backbone: siglip}}}
    data: {data_path: llava_v1_5_mix665k.json}
    """
)


def test_run_yaml_loads_with_the_paper_stage2_numbers(tmp_path):
    path = tmp_path / "stage2.yaml"
    path.write_text(RUN_YAML)
    config = load_train_config(path)
    assert config.global_batch_size(world_size=4) == 128  # 4 x 8 x 4, the paper's stage-2 batch
    assert config.optimizer.betas == [0.9, 0.95] and config.lr_schedule.learning_rate == 2e-5
    assert config.pet_config.lora_rank == 128 and config.pet_config.lora_alpha == 256.0
    assert config.context.mode_name == "graph"
    assert config.yaml_text == RUN_YAML and config.source == str(path)


def test_run_yaml_is_loadable_by_mindformers(tmp_path):
    from eve_ms.mindformers_env import import_mindformers

    import_mindformers()
    from mindformers.tools.register import MindFormerConfig

    path = tmp_path / "stage2.yaml"
    path.write_text(RUN_YAML)
    mf = MindFormerConfig(str(path))
    assert mf.runner_config.gradient_accumulation_steps == 8
    assert mf.lr_schedule.type == "CosineWithWarmUpLR"


@pytest.mark.parametrize(
    "text,message",
    [
        ("runner_config: {batch_sise: 2}",
         r"unknown key 'batch_sise' in runner_config section of .*did you mean 'batch_size'"),
        ("runner_wrapper: {compute_dtype: fp8}", "compute_dtype must be one of"),
        ("optimizer: {type: SGD}", "optimizer.type must be AdamW"),
        ("runner_config: {gradient_accumulation_steps: 0}", "gradient_accumulation_steps must be at least 1"),
        ("lr_schedule: {warmup_ratio: 1.5}", r"warmup_ratio must be in \[0, 1\]"),
    ],
)
def test_bad_run_yaml_is_an_error_naming_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_train_config(path)


def test_train_command_reports_a_bad_config_and_fails(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("stage: 4\n")
    assert cli_main(["train", "--config", str(path)]) == 2  # a config error is a usage error
    assert "stage must be 0, 1, 2 or 3" in capsys.readouterr().err


def test_plot_command_writes_a_png_per_curve(tmp_path, capsys):
    log = tmp_path / "train_log.jsonl"
    with open(log, "w") as fh:
        for step in range(1, 6):
            loss = "nan" if step == 3 else 2.0 / step
            rates = {"layer_0": 0.9, "layer_2": 0.8 + 0.01 * step}
            fh.write(json.dumps({"step": step, "loss": loss, "aux_loss": 1e-3, "lr": 1e-3 * step, "grad_norm": 1.0,
                                 "tokens_per_s": 100.0, "token_success_rate": rates}) + "\n")
        fh.write('{"step": 6, "lo')  # torn last line of a killed writer
    out = tmp_path / "plots"
    assert cli_main(["plot", str(log), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["aux_loss.png", "grad_norm.png", "loss.png", "lr.png", "token_success_rate.png",
                     "tokens_per_s.png"]
    for png in out.iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out / "loss.png") in capsys.readouterr().out
