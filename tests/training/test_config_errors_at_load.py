"""Config errors a user can make in a stage yaml stop `eve-ms train` when the yaml loads: one line naming the
key and the file, exit status 2, no traceback, nothing built or written (the output folder is never made)."""
import json
import os
import subprocess
import sys
import time

import pytest
import yaml

import subprocess_runs as runs
from eve_ms.config import ConfigError, load_eve_config, save_eve_config
from eve_ms.training.config import load_train_config

TINY = os.path.join(runs.REPO, "yaml_configs", "tiny")


@pytest.fixture
def data_files(tmp_path):
    """A one-record LLaVA file and an image folder (so only the config can be at fault)."""
    images = tmp_path / "images"
    images.mkdir()
    path = tmp_path / "instruct.json"
    path.write_text(json.dumps([{"id": "0", "conversations": [{"from": "human", "value": "Hi"},
                                                               {"from": "gpt", "value": "Hello"}]}]))
    return {"data_path": str(path), "image_folder": str(images)}


def stage_yaml(tmp_path, stage_file, data, **sections):
    raw = {"base_config": os.path.join(TINY, stage_file), "output_dir": str(tmp_path / "out"),
           "load_checkpoint": str(tmp_path / "start"), "data": data, **sections}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def train_cli(tmp_path, config_path):
    """`eve-ms train --config X` as a user runs it, from `tmp_path` as the working directory."""
    return subprocess.run([sys.executable, "-m", "eve_ms.cli", "train", "--config", config_path], cwd=tmp_path,
                          env=runs.env(), capture_output=True, text=True, timeout=300)


def assert_one_line_config_error(result, *fragments):
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("eve-ms train: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_float16_training_on_cpu_is_a_config_error_naming_the_key_and_the_file(tmp_path, data_files):
    path = stage_yaml(tmp_path, "stage2.yaml", data_files, runner_wrapper={"compute_dtype": "float16"})
    result = train_cli(tmp_path, path)
    assert_one_line_config_error(result, "runner_wrapper.compute_dtype float16", "device CPU", path)
    assert not (tmp_path / "out").exists()  # failed before any work
    assert not (tmp_path / "rank_0").exists()  # no graph was compiled, so no dump either


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_on_cpu_fails_when_the_yaml_loads(tmp_path, data_files, dtype, monkeypatch):
    monkeypatch.delenv("EVE_DEVICE_TARGET", raising=False)
    path = stage_yaml(tmp_path, "stage2.yaml", data_files, runner_wrapper={"compute_dtype": dtype})
    with pytest.raises(ConfigError, match=rf"{path}: runner_wrapper.compute_dtype {dtype} cannot train on device CPU"):
        load_train_config(path)
    monkeypatch.setenv("EVE_DEVICE_TARGET", "Ascend")  # a device that has it: the same yaml loads
    assert load_train_config(path).runner_wrapper.compute_dtype == dtype


@pytest.mark.parametrize("stage_file", ["stage2.yaml", "stage3.yaml"])
def test_a_bad_evf_strategy_fails_at_load_naming_the_key_and_the_file(tmp_path, data_files, stage_file):
    # stage 2 does not use EVF, but hands the section down to stage 3's model_config.yaml; stage 3 builds it
    path = stage_yaml(tmp_path, stage_file, data_files, model={"model_config": {"evf": {"strategy": "smart"}}})
    start = time.monotonic()
    result = train_cli(tmp_path, path)
    elapsed = time.monotonic() - start
    assert_one_line_config_error(result, "evf.strategy", "'smart'", path)
    assert not (tmp_path / "out").exists()
    # the whole CLI run to its first error, interpreter start included (measured 0.6-3.2 s at load 2-7): a
    # check that ran after the tokenizer, data or a graph compile would take far longer than this bound
    assert elapsed < 15, f"{elapsed:.1f} s to the first error"


@pytest.mark.parametrize("section,message", [
    ({"evf": {"mode": "dense"}}, "evf.mode must be one of"),
    ({"evf": {"kernel": "cuda"}}, "evf.kernel must be one of"),
    ({"evf": {"redistribute_ratio": 1.5}}, r"evf.redistribute_ratio must be in \[0, 1\]"),
    ({"evf": {"layers": "odd"}}, "evf.layers must be one of"),
    ({"evf": {"layers": [0, 9]}}, r"evf.layers has indices outside 0..3: \[9\]"),
    ({"adapter": {"type": "qformer"}}, "unknown adapter type 'qformer'"),
    ({"llm": {"num_kv_heads": 3}}, "llm.num_heads=4 is not a multiple of llm.num_kv_heads=3"),
    ({"llm": {"rope_scaling": {"type": "linear"}}}, r"llm.rope_scaling of type 'linear' needs key\(s\) \['factor'\]"),
])
def test_every_model_section_is_checked_at_load_whatever_the_stage_uses(tmp_path, data_files, section, message):
    path = stage_yaml(tmp_path, "stage1.yaml", data_files, model={"model_config": section})
    with pytest.raises(ConfigError, match=message) as raised:
        load_train_config(path)
    assert path in str(raised.value)


@pytest.mark.parametrize("sections,message", [
    ({"pet_config": {"lora_dropout": 1.0}}, r"pet_config.lora_dropout must be in \[0, 1\)"),
    ({"pet_config": {"lora_rank": 0}}, "pet_config.lora_rank must be at least 1"),
    ({"context": {"device_target": "TPU"}}, "context.device_target: unknown device_target 'TPU'"),
])
def test_sections_a_stage_does_not_use_are_checked_at_load(tmp_path, data_files, sections, message):
    path = stage_yaml(tmp_path, "stage1.yaml", data_files, **sections)  # stage 1 has no LoRA
    with pytest.raises(ConfigError, match=message) as raised:
        load_train_config(path)
    assert path in str(raised.value)


def _start_checkpoint(tmp_path):
    """The start checkpoint's model_config.yaml: the tiny model as stage 1 wrote it."""
    (tmp_path / "start").mkdir()
    save_eve_config(load_eve_config(os.path.join(TINY, "stage1.yaml")), str(tmp_path / "start" / "model_config.yaml"))
    return str(tmp_path / "start" / "model_config.yaml")


def test_a_run_yaml_whose_architecture_disagrees_with_its_start_checkpoint_fails_naming_field_and_values(
        tmp_path, data_files):
    start = _start_checkpoint(tmp_path)
    path = stage_yaml(tmp_path, "stage2.yaml", data_files,
                      model={"model_config": {"llm": {"rope_theta": 500000, "rms_norm_eps": 1.0e-3}}})
    result = train_cli(tmp_path, path)
    assert_one_line_config_error(
        result,
        f"model.model_config.llm.rms_norm_eps is 0.001 in {path} but 1e-06 in {start}",
        f"model.model_config.llm.rope_theta is 500000.0 in {path} but 10000.0 in {start}",
    )
    assert not (tmp_path / "out").exists()


def test_fields_a_stage_builds_anew_may_differ_from_the_start_checkpoint(tmp_path, data_files):
    _start_checkpoint(tmp_path)
    # stage 3 turns EVF on over stage 2's dense model; stage 1 starts its adapter from random
    stage3 = stage_yaml(tmp_path, "stage3.yaml", data_files, model={"model_config": {"evf": {"strategy": "gbpr"}}})
    assert load_train_config(stage3).stage == 3
    stage1 = stage_yaml(tmp_path, "stage1.yaml", data_files, model={"model_config": {"adapter": {"type": "mlp2x_gelu"}}})
    assert load_train_config(stage1).stage == 1
    stage2 = stage_yaml(tmp_path, "stage2.yaml", data_files, model={"model_config": {"adapter": {"type": "mlp2x_gelu"}}})
    with pytest.raises(ConfigError, match="model.model_config.adapter.type is 'mlp2x_gelu'"):
        load_train_config(stage2)


GRAPH_FAILURE = """
import sys
import numpy as np
import mindspore as ms
from mindspore import nn, ops
from eve_ms.training.launch import keep_graph_dumps_in

ms.set_context(device_target="CPU", mode=ms.GRAPH_MODE)
print(keep_graph_dumps_in(sys.argv[1]))

class Mixed(nn.Cell):
    def construct(self, x):
        return ops.matmul(x, ops.cast(x, ms.float16))  # float32 x float16: fails to compile

try:
    Mixed()(ms.Tensor(np.ones((2, 2), np.float32)))
except TypeError as err:
    print("compile failed:", str(err).splitlines()[0])
"""


def test_graph_compile_dumps_go_under_the_run_output_directory(tmp_path):
    env = runs.env()
    env.pop("MS_OM_PATH", None)
    out = tmp_path / "run_out"
    script = tmp_path / "graph_failure.py"  # MindSpore compiles only source it can read from a file
    script.write_text(GRAPH_FAILURE)
    result = subprocess.run([sys.executable, str(script), str(out)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert "compile failed" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
    dumps = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files if f == "analyze_fail.ir"]
    assert dumps == [str(out / "graph_dumps" / "rank_0" / "om" / "analyze_fail.ir")]
    assert not (tmp_path / "rank_0").exists()
    assert os.path.getsize(dumps[0]) > 0


def test_a_data_batch_size_that_disagrees_with_the_runner_s_fails_at_load(tmp_path, data_files):
    # the trainer's runner_config.batch_size is the micro batch; a data.batch_size that lost silently would mislead
    path = stage_yaml(tmp_path, "stage1.yaml", {**data_files, "batch_size": 3}, runner_config={"batch_size": 2})
    with pytest.raises(ConfigError, match=r"data.batch_size=3 disagrees with runner_config.batch_size=2") as raised:
        load_train_config(path)
    assert path in str(raised.value)
    same = stage_yaml(tmp_path, "stage1.yaml", {**data_files, "batch_size": 2}, runner_config={"batch_size": 2})
    assert load_train_config(same).task_sections.data.batch_size == 2


def test_the_stage_sections_are_parsed_once_when_the_yaml_loads(tmp_path, data_files):
    from eve_ms.training import stages

    config = load_train_config(stage_yaml(tmp_path, "stage1.yaml", data_files))
    sections = config.task_sections
    assert isinstance(sections, stages.StageSections) and stages.sections_of(config) is sections
    assert sections.data.data_path == data_files["data_path"] and sections.model.evf.enabled is False
