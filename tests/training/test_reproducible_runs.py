"""Runs reproduce: the tiny stage-2 yaml with its default LoRA dropout (0.05), trained twice with the same seed,
gives bit-identical weights, and a run killed with SIGKILL and resumed with --resume ends with the same weights.

Each run is `eve-ms train` in its own process (graph mode), from one start checkpoint (a random tiny model with a
BPE tokenizer, standing in for stage 1's output) on the synthetic instructions: 3 epochs of 6 steps. With
MindSpore's own nn.Dropout in the LoRA layers, two such runs differed from step 6 on (before `SeededDropout`);
the test's LLM has 2 layers instead of 4 to compile faster.
"""
import os
import signal
import subprocess

import mindspore as ms
import numpy as np
import pytest
import yaml

import subprocess_runs as runs
from eve_ms.checkpoint_dir import save_eve_checkpoint
from eve_ms.config import load_eve_config
from eve_ms.data.tokenizer import conversation_texts, train_bpe_tokenizer
from eve_ms.demo.synthetic import generate
from eve_ms.models.eve import EveForCausalLM
from eve_ms.training.checkpoint import read_safetensors
from eve_ms.training.metrics import read_log

TINY_STAGE2 = os.path.join(runs.REPO, "yaml_configs", "tiny", "stage2.yaml")
MODEL = {"model_config": {"llm": {"num_layers": 2}}}
STEPS = 18  # 3 epochs x 24 samples / batch 4
KILL_AFTER = 8


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    data = generate(str(root / "data"), image_size=32, num_caption=1, num_instruct_images=24, num_eval_images=1,
                    text_only_fraction=0.0)
    tokenizer = train_bpe_tokenizer(conversation_texts(data["instruct"]), 300)
    config = root / "model.yaml"
    config.write_text(yaml.safe_dump({"base_config": TINY_STAGE2, "model": MODEL}))
    eve = load_eve_config(str(config))
    ms.set_seed(1)
    save_eve_checkpoint(EveForCausalLM(eve), eve, str(root / "start"), tokenizer=tokenizer)
    return root, data


def run_yaml(root, data, name) -> str:
    raw = {
        "base_config": TINY_STAGE2,  # lora_dropout 0.05, seed 0, graph mode
        "output_dir": str(root / name),
        "load_checkpoint": str(root / "start"),
        "model": MODEL,
        "data": {"data_path": data["instruct"], "image_folder": data["image_folder"]},
        "runner_config": {"epochs": 3},
        "checkpoint": {"save_checkpoint_steps": 4, "keep_checkpoint_max": 10},
        "logging": {"progress_bar": False, "plot_at_end": False, "tensorboard": False},
        "context": {"runtime_num_threads": 2},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def weights(path):
    return read_safetensors(str(path))[0]


def assert_bit_identical(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    differing = [name for name in a if not np.array_equal(a[name], b[name])]
    assert not differing, f"{len(differing)} of {len(a)} tensors differ, e.g. {differing[:3]}"


def test_two_runs_and_a_killed_and_resumed_run_give_bit_identical_weights(start):
    """Three processes: a whole run; a second run of the same yaml, compared with the first at the kill and
    SIGKILLed there; that run resumed with --resume, compared with the first at the end."""
    root, data = start
    first = root / "first"
    done = runs.run(runs.train_command(run_yaml(root, data, "first")), timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    first_log = read_log(str(first / "train_log.jsonl"))
    assert [r["step"] for r in first_log] == list(range(1, STEPS + 1))
    # the LoRA weights trained at all (B starts at zero), so identical weights are no accident of a frozen model
    lora_b = {k: v for k, v in weights(first / "model.safetensors").items() if k.endswith("mindpet_delta_lora_b")}
    assert lora_b and all(np.abs(v).max() > 0 for v in lora_b.values())

    second_yaml = run_yaml(root, data, "second")
    second = root / "second"
    proc = subprocess.Popen(runs.train_command(second_yaml), cwd=runs.REPO, env=runs.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        reached = runs.wait_for_file(str(second / "checkpoints" / f"step_{KILL_AFTER:08d}.safetensors"), proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        output = proc.communicate()[0]
    assert reached, output[-3000:]
    assert proc.returncode == -signal.SIGKILL and not (second / "model.safetensors").exists()
    # two runs of one yaml, past the step where nn.Dropout's masks diverged: every trained tensor and moment equal
    assert_bit_identical(weights(second / "checkpoints" / f"step_{KILL_AFTER:08d}.safetensors"),
                         weights(first / "checkpoints" / f"step_{KILL_AFTER:08d}.safetensors"))

    resumed = runs.run(runs.train_command(second_yaml, "--resume"), timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert_bit_identical(weights(first / "model.safetensors"), weights(second / "model.safetensors"))
    assert_bit_identical(weights(first / "merged" / "model.safetensors"),
                         weights(second / "merged" / "model.safetensors"))
    assert [r["loss"] for r in read_log(str(second / "train_log.jsonl"))] == [r["loss"] for r in first_log]
