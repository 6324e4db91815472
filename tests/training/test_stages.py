"""The Eve stages from yaml: a tiny model goes 0 -> 1 -> 2 -> 3, each stage from the previous one's output.

One module-scoped run (graph mode, in this process) trains every stage for two steps from
derived yamls that inherit the repository's `yaml_configs/tiny` files (data paths and a
smaller LLM overridden), launched the ways users launch them: `eve-ms train` (cli), `python
tools/run_eve.py` (the script's main) and `eve_ms.training.launch.main`. The task builder is
wrapped to record every parameter as built, so the tests compare before and after training.
"""
import glob
import os
import runpy
import shutil
import sys
from dataclasses import dataclass, field

import mindspore as ms
import numpy as np
import pytest
import yaml

import subprocess_runs as runs
from eve_ms.checkpoint_dir import load_eve_checkpoint, read_eve_config
from eve_ms.cli import main as cli_main
from eve_ms.config import ConfigError
from eve_ms.data.config import DataConfig
from eve_ms.data.dataset import build_loader
from eve_ms.data.tokenizer import load_tokenizer
from eve_ms.demo.synthetic import generate
from eve_ms.training import launch, stages
from eve_ms.training.checkpoint import CheckpointError, read_safetensors
from eve_ms.training.config import load_train_config
from eve_ms.training.distributed import DistInfo
from eve_ms.training.metrics import read_log

REPO = runs.REPO
TINY = os.path.join(REPO, "yaml_configs", "tiny")
STEPS = 2
# the tiny yaml's model, smaller still for test speed: 2 LLM layers (EVF in layer 0)
TEST_MODEL = {"model_config": {"llm": {"num_layers": 2}}}
QUIET = {"logging": {"progress_bar": False, "plot_at_end": False}, "context": {"runtime_num_threads": 2}}


@dataclass
class Chain:
    root: str
    data: dict
    configs: dict = field(default_factory=dict)  # stage -> yaml path
    outputs: dict = field(default_factory=dict)  # stage -> output_dir
    built: dict = field(default_factory=dict)  # stage -> {name: value as built}
    trainable: dict = field(default_factory=dict)  # stage -> set of trainable names


def write_stage_yaml(path, stage_file, **overrides) -> str:
    """A run yaml inheriting `yaml_configs/tiny/<stage_file>` through MindFormers' base_config."""
    raw = {"base_config": os.path.join(TINY, stage_file), "model": TEST_MODEL, **QUIET}
    raw.update(overrides)
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(raw, fh, sort_keys=False)
    return str(path)


def _run_script(config_path):
    """`python tools/run_eve.py --config X` in this process; its exit status."""
    argv = sys.argv
    sys.argv = ["tools/run_eve.py", "--config", config_path]
    try:
        runpy.run_path(os.path.join(REPO, "tools", "run_eve.py"), run_name="__main__")
    except SystemExit as done:
        return done.code
    finally:
        sys.argv = argv
    return None


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    data = generate(str(root / "data"), image_size=32, num_caption=8, num_instruct_images=8, num_eval_images=1,
                    text_only_fraction=0.0)
    images = {"image_folder": data["image_folder"]}
    run = Chain(str(root), data)
    for stage in range(4):
        run.outputs[stage] = str(root / f"stage{stage}")
    run.configs[0] = write_stage_yaml(
        root / "s0.yaml", "stage0_llm.yaml", output_dir=run.outputs[0],
        runner_config={"epochs": 1, "stop_step": STEPS}, data={"data_path": data["text_train"]},
        task_options={"tokenizer_vocab_size": 512, "tokenizer_corpus": [data["captions"], data["instruct"]]})
    run.configs[1] = write_stage_yaml(
        root / "s1.yaml", "stage1.yaml", output_dir=run.outputs[1], load_checkpoint=run.outputs[0],
        runner_config={"stop_step": STEPS}, data={"data_path": data["captions"], **images})
    run.configs[2] = write_stage_yaml(
        root / "s2.yaml", "stage2.yaml", output_dir=run.outputs[2], load_checkpoint=run.outputs[1],
        runner_config={"stop_step": STEPS}, data={"data_path": data["instruct"], **images})
    # global batch 4 as 2 micro-batches of 2: the reference of the 2-worker run below
    run.configs[3] = write_stage_yaml(
        root / "s3.yaml", "stage3.yaml", output_dir=run.outputs[3], load_checkpoint=run.outputs[2],
        runner_config={"batch_size": 2, "gradient_accumulation_steps": 2, "stop_step": STEPS},
        data={"data_path": data["instruct"], **images})

    original = stages.build_stage

    def recording_build(config, dist):
        task = original(config, dist)
        params = list(task.network.get_parameters())
        run.built[config.stage] = {p.name: p.asnumpy().copy() for p in params}
        run.trainable[config.stage] = {p.name for p in params if p.requires_grad}
        return task

    launchers = {0: lambda c: cli_main(["train", "--config", c]), 1: _run_script,
                 2: lambda c: launch.main(["--config", c]), 3: lambda c: cli_main(["train", "--config", c])}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stages, "build_stage", recording_build)
        # launch points MindFormers' log at the first run's folder for the whole process: keep it here
        patch.setenv("LOG_MF_PATH", str(root / "mindformers_log"))
        try:
            for stage in range(4):
                assert launchers[stage](run.configs[stage]) == 0, f"stage {stage} failed"
        finally:
            ms.set_context(mode=ms.PYNATIVE_MODE)
    return run


def _weights(directory):
    return read_safetensors(os.path.join(directory, "model.safetensors"))[0]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_each_stage_changes_exactly_its_trainable_weights(chain, stage):
    built, trained = chain.built[stage], _weights(chain.outputs[stage])
    assert sorted(trained) == sorted(built)
    for name, before in built.items():
        if name in chain.trainable[stage]:
            assert not np.array_equal(trained[name], before), f"stage {stage}: trainable {name} did not change"
        else:
            np.testing.assert_array_equal(trained[name], before, err_msg=f"stage {stage}: frozen {name} changed")
    log = read_log(os.path.join(chain.outputs[stage], "train_log.jsonl"))
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert all(np.isfinite(r["loss"]) for r in log)


def test_stages_train_the_parameters_the_paper_says(chain):
    names = {stage: chain.trainable[stage] for stage in range(4)}
    assert names[0] == {n for n in chain.built[0] if n.startswith("llm.")}
    assert names[1] == {n for n in chain.built[1] if n.startswith("adapter.")}
    lora = {n for n in names[2] if ".mindpet_delta_lora_" in n}
    assert names[2] == lora | {n for n in chain.built[2] if n.startswith("adapter.")}
    # LoRA on every linear of the LLM's layers (2 layers x q/k/v/o/gate/up/down), not on lm_head
    assert len(lora) == 2 * 2 * 7 and not any(n.startswith("llm.lm_head") for n in lora)
    # stage 3: the vision FFN and router of the one EVF layer (layer 0), nothing else
    expected = {n for n in chain.built[3] if n.startswith(("llm.model.layers.0.mlp.vision_ffn.",
                                                           "llm.model.layers.0.mlp.router."))}
    assert names[3] == expected and len(expected) == 4  # gate/up/down + router weights
    assert not any("language_ffn" in n for n in names[3])


def test_stage_outputs_are_checkpoint_directories_handing_down_the_tokenizer(chain):
    tokenizer_files = sorted(os.listdir(os.path.join(chain.outputs[0], "tokenizer")))
    for stage in range(4):
        out = chain.outputs[stage]
        assert sorted(os.listdir(os.path.join(out, "tokenizer"))) == tokenizer_files
        assert read_eve_config(out).evf.enabled == (stage == 3)
    # stage 0's BPE is the one every later stage used
    assert len(load_tokenizer(os.path.join(chain.outputs[3], "tokenizer"))) == 512
    for stage in (0, 1, 3):
        load_eve_checkpoint(chain.outputs[stage], load_tokenizer=False)  # strict: loads as a plain Eve model
    merged = os.path.join(chain.outputs[2], "merged")
    with pytest.raises(ConfigError, match=f"unmerged LoRA weights; use {merged}"):
        load_eve_checkpoint(chain.outputs[2], load_tokenizer=False)  # un-merged LoRA weights: says which folder
    load_eve_checkpoint(merged, load_tokenizer=False)
    log = read_log(os.path.join(chain.outputs[3], "train_log.jsonl"))
    for record in log:
        rates = record["token_success_rate"]
        assert list(rates) == ["layer_0"] and 0.0 < rates["layer_0"] <= 1.0


def _batch(chain, stage_dir, data_key, template, max_length, size=2):
    eve = read_eve_config(stage_dir)
    tokenizer = load_tokenizer(os.path.join(stage_dir, "tokenizer"))
    data = DataConfig(data_path=chain.data[data_key], image_folder=chain.data["image_folder"], template=template,
                      max_length=max_length, backend="python", batch_size=size, shuffle=False)
    return build_loader(data, eve, tokenizer, log=lambda *a: None).batch_at(0, 0)


def _logits(model, batch, images=True):
    pixels = ms.Tensor(batch["pixel_values"]) if images else None
    logits = model.forward(ms.Tensor(batch["input_ids"]), ms.Tensor(batch["attention_mask"]), pixels)[0]
    return logits.asnumpy()


def test_stage2_lora_merged_model_equals_the_lora_model(chain):
    stage2 = chain.outputs[2]
    batch = _batch(chain, stage2, "instruct", "v1", 192)
    assert batch["has_image"].all()
    lora_model = stages.load_lora_model(read_eve_config(stage2), os.path.join(stage2, "model.safetensors"))
    lora_model.set_train(False)
    merged, _, _ = load_eve_checkpoint(os.path.join(stage2, "merged"), load_tokenizer=False)
    stage1, _, _ = load_eve_checkpoint(chain.outputs[1], load_tokenizer=False)
    with_lora, with_merge = _logits(lora_model, batch), _logits(merged, batch)
    np.testing.assert_allclose(with_merge, with_lora, rtol=0, atol=1e-5)
    # the comparison has teeth: the trained LoRA moved the output well past that tolerance
    assert np.abs(_logits(stage1, batch) - with_lora).max() > 1e-4


def test_stage3_at_conversion_in_language_only_mode_is_the_merged_stage2_model_bit_for_bit(chain):
    config = load_train_config(chain.configs[3])
    model, eve = stages.build_stage_model(config, log=lambda *a: None)
    model.set_evf_mode("language_only")
    model.set_train(False)
    merged, _, _ = load_eve_checkpoint(os.path.join(chain.outputs[2], "merged"), load_tokenizer=False)
    batch = _batch(chain, chain.outputs[2], "text_train", "plain", 32, size=4)
    assert not batch["has_image"].any()
    np.testing.assert_array_equal(_logits(model, batch, images=False), _logits(merged, batch, images=False))
    # the model as built is what stage 3 started from (recorded during the run), and stage 3 builds the
    # same model from stage 2's merged/ directory (no LoRA layers to rebuild there)
    config.load_checkpoint = os.path.join(chain.outputs[2], "merged")
    from_merged, _ = stages.build_stage_model(config, log=lambda *a: None)
    from_merged = {p.name: p.asnumpy() for p in from_merged.get_parameters()}
    for param in model.get_parameters():
        np.testing.assert_array_equal(param.asnumpy(), chain.built[3][param.name], err_msg=param.name)
        np.testing.assert_array_equal(from_merged[param.name], chain.built[3][param.name], err_msg=param.name)


def test_missing_init_checkpoint_is_an_error_naming_the_path(chain, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOG_MF_PATH", str(tmp_path / "mindformers_log"))
    missing = str(tmp_path / "no_such_stage1")
    path = write_stage_yaml(tmp_path / "s2.yaml", "stage2.yaml", output_dir=str(tmp_path / "out"),
                            load_checkpoint=missing, data={"data_path": chain.data["instruct"]})
    try:
        assert cli_main(["train", "--config", path]) == 1
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert f"load_checkpoint not found: {missing}" in capsys.readouterr().err


def _without_model_config(directory, tmp_path):
    """A copy of checkpoint `directory` without model_config.yaml (a bare weights folder: only tensors are checked)."""
    copy = str(tmp_path / "bare_checkpoint")
    shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("model_config.yaml"))
    return copy


def test_mismatched_init_checkpoint_is_an_error_naming_the_tensor(chain, tmp_path):
    path = write_stage_yaml(tmp_path / "s1.yaml", "stage1.yaml", output_dir=str(tmp_path / "out"),
                            load_checkpoint=_without_model_config(chain.outputs[0], tmp_path),
                            data={"data_path": chain.data["captions"]},
                            model={"model_config": {"llm": {"num_layers": 2, "hidden_size": 32}}})
    with pytest.raises(CheckpointError, match=r"tensor 'llm\.model\.embed_tokens\.weight' has shape \[512, 64\]"):
        stages.build_stage_model(load_train_config(path), log=lambda *a: None)


def test_a_run_yaml_disagreeing_with_the_checkpoints_architecture_is_an_error_naming_field_and_values(chain, tmp_path):
    path = write_stage_yaml(tmp_path / "s1.yaml", "stage1.yaml", output_dir=str(tmp_path / "out"),
                            load_checkpoint=chain.outputs[0], data={"data_path": chain.data["captions"]},
                            model={"model_config": {"llm": {"num_layers": 2, "hidden_size": 32}}})
    with pytest.raises(ConfigError, match=r"model\.model_config\.llm\.hidden_size is 32 in .*s1\.yaml but 64 in "
                                          r".*stage0.model_config\.yaml"):
        load_train_config(path)


def test_a_tokenizer_larger_than_the_vocabulary_is_an_error(chain, tmp_path):
    path = write_stage_yaml(tmp_path / "s1.yaml", "stage1.yaml", output_dir=str(tmp_path / "out"),
                            load_checkpoint=_without_model_config(chain.outputs[0], tmp_path),
                            data={"data_path": chain.data["captions"]},
                            model={"model_config": {"llm": {"num_layers": 2, "vocab_size": 300}}})
    with pytest.raises(ConfigError, match="has 512 tokens but model llm.vocab_size is 300"):
        stages.build_stage(load_train_config(path), DistInfo())


def test_stage3_on_two_workers_matches_one_worker_and_only_rank0_writes(chain, tmp_path):
    out = tmp_path / "stage3_dp"
    path = write_stage_yaml(
        tmp_path / "s3_dp.yaml", "stage3.yaml", output_dir=str(out), load_checkpoint=chain.outputs[2],
        runner_config={"batch_size": 2, "gradient_accumulation_steps": 1, "stop_step": STEPS},
        parallel_config={"data_parallel": 2}, data={"data_path": chain.data["instruct"],
                                                    "image_folder": chain.data["image_folder"]})
    command = runs.msrun_command(2, tmp_path / "msrun_logs", path)
    command[command.index(runs.ENTRY)] = os.path.join(REPO, "tools", "run_eve.py")  # what users launch
    job = runs.run(command, timeout=400)
    worker_logs = "".join(open(p, errors="replace").read()[-3000:]
                          for p in sorted(glob.glob(str(tmp_path / "msrun_logs" / "worker_*.log"))))
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:] + worker_logs

    single = read_log(os.path.join(chain.outputs[3], "train_log.jsonl"))
    double = read_log(str(out / "train_log.jsonl"))
    assert [r["target_tokens"] for r in double] == [r["target_tokens"] for r in single]
    np.testing.assert_allclose([r["loss"] for r in double], [r["loss"] for r in single], rtol=0, atol=1e-4)
    np.testing.assert_allclose([r["aux_loss"] for r in double], [r["aux_loss"] for r in single], rtol=0, atol=1e-6)
    # routing noise follows the sample position, so routing is the same under either split: per step and per EVF
    # layer the rates are ratios of the same integer counts, equal up to float rounding of the all-reduced sums
    for step, (two, one) in enumerate(zip(double, single)):
        assert two["token_success_rate"].keys() == one["token_success_rate"].keys(), step
        for layer, rate in one["token_success_rate"].items():
            assert two["token_success_rate"][layer] == pytest.approx(rate, rel=0, abs=1e-6), (step, layer)

    written = sorted(set(os.listdir(out)) - {"mindformers_log"})  # MindFormers' own log, where LOG_MF_PATH says
    events = [name for name in written if name.startswith("events.out.tfevents.")]
    assert len(events) == 1  # rank 0's TensorBoard log
    assert [name for name in written if name not in events] == ["checkpoints", "config.yaml", "model.safetensors",
                                                                "model_config.yaml", "tokenizer", "train_log.jsonl"]
    assert sorted(os.listdir(out / "checkpoints")) == [f"step_{STEPS:08d}.safetensors"]
    assert len(double) == STEPS  # one writer: no record twice
    trained = _weights(str(out))
    for name, value in _weights(chain.outputs[3]).items():
        np.testing.assert_allclose(trained[name], value, rtol=0, atol=1e-5, err_msg=name)


def test_router_overflow_tool_reads_the_routers_preferences_that_stage3_logged(chain):
    """tools/router_overflow.py rebuilds the stage-3 model and loader of the run yaml: its own router's preferred
    experts on the first step's micro-batches are what training allocated at step 1 (train_log.jsonl)."""
    import router_overflow  # tools/ is on the tests' path (conftest)

    config = load_train_config(chain.configs[3])
    result = router_overflow.measure(chain.configs[3], routers=50, batches=config.runner_config.gradient_accumulation_steps)
    logged = next(r for r in read_log(os.path.join(chain.outputs[3], "train_log.jsonl")) if r.get("routing"))
    assert logged["step"] == 1
    for index, layer in result["layers"].items():
        counts = logged["routing"][f"layer_{index}"]
        real = sum(counts[m]["valid"] for m in ("text", "image"))
        kept_vision = sum(counts[m]["kept_vision"] for m in ("text", "image"))
        moved = sum(counts[m]["dropped"] + counts[m]["redistributed"] for m in ("text", "image"))
        assert sum(layer["own_real"]) == real
        preferred = sum(layer["own_prefers_vision"])
        if moved == 0:  # every token where it preferred to go
            assert preferred == kept_vision
        else:
            assert kept_vision - moved <= preferred <= kept_vision + moved
        assert len(layer["over_per_router"]) == 50 * config.runner_config.gradient_accumulation_steps
        assert 0.5 <= layer["median_busiest_share"] <= 1.0 and 0.0 <= layer["mean_over_rms"] <= 1.0
