"""Every failure a user can cause through the CLI is one line on stderr, with the right exit status, no traceback.

Each test runs `python -m eve_ms.cli ...` in a subprocess, as a user does, on the demo's data
(eve_ms.demo.synthetic) and the tiny yamls. The training rows use stage 0 (no start checkpoint
needed): every data error is found while the data is indexed, before a model is built. Rows that
need a training run use the toy task (tests/training/toy_task.py) or one short stage-0 run.
"""
import json
import os
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "yaml_configs", "tiny")
TOY_TASK = os.path.join(REPO, "tests", "training", "toy_task.py") + ":build"


def cli(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in ("EVE_DEVICE_TARGET", "EVE_MS_DEBUG", "EVE_MS_VERBOSE", "GLOG_v", "LOG_MF_PATH"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "eve_ms.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def assert_one_line_error(result, code, *fragments):
    """Exit status `code`, one `eve-ms ...: error:` line on stderr holding every fragment, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The demo's data (captions with images, text corpus) and a tokenizer trained on it."""
    from eve_ms.data.tokenizer import conversation_texts, train_bpe_tokenizer
    from eve_ms.demo.synthetic import generate

    root = tmp_path_factory.mktemp("user")
    data = generate(str(root / "data"), image_size=32, num_caption=8, num_instruct_images=2, num_eval_images=1,
                    num_text_descriptions=16, text_only_fraction=0.0)
    texts = conversation_texts(data["captions"]) + conversation_texts(data["text_train"])
    train_bpe_tokenizer(texts * 4, vocab_size=300, save_dir=str(root / "tokenizer"))
    data["tokenizer"] = str(root / "tokenizer")
    data["root"] = root
    return data


def stage0_yaml(path, user, output_dir, data=None, **sections) -> str:
    """A run yaml inheriting the tiny stage-0 yaml, reading `user`'s tokenizer (no BPE training)."""
    raw = {
        "base_config": os.path.join(TINY, "stage0_llm.yaml"),
        "model": {"model_config": {"llm": {"num_layers": 2}}},
        "output_dir": str(output_dir),
        "logging": {"progress_bar": False, "plot_at_end": False, "tensorboard": False},
        "context": {"runtime_num_threads": 2},
        "task_options": {"tokenizer_vocab_size": 0},
        "data": {"data_path": user["text_train"], "tokenizer_path": user["tokenizer"], **(data or {})},
    }
    raw.update(sections)
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(raw, fh, sort_keys=False)
    return str(path)


# ----------------------------------------------------------------------------------------------- data files


def _records(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _non_utf8_list(user, root):
    """A JSON list (the captions) with one latin-1 byte inside its 5th element; (path, byte offset)."""
    text = json.dumps(_records(user["captions"]), indent=1).encode("utf-8")
    start = text.index(b'"id"', text.index(b'"id"') + 1)  # 2nd element
    for _ in range(3):
        start = text.index(b'"id"', start + 1)  # 5th element
    offset = text.index(b'"value": "', start) + len(b'"value": "')
    path = root / "latin1.json"
    path.write_bytes(text[:offset] + b"\xe9" + text[offset:])
    return str(path), offset


def _non_utf8_lines(user, root):
    """The captions as JSONL with one latin-1 byte on line 5; (path, byte offset)."""
    lines = [json.dumps(r).encode("utf-8") for r in _records(user["captions"])]
    column = lines[4].index(b'"value": "') + len(b'"value": "')
    lines[4] = lines[4][:column] + b"caf\xe9 " + lines[4][column:]
    path = root / "latin1.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path), sum(len(line) + 1 for line in lines[:4]) + column + 3


def make_row(name, user, root):
    """(data section overrides, exit status, fragments of the error line) of one table row."""
    captions = {"data_path": user["captions"], "image_folder": user["image_folder"], "template": "plain"}
    if name == "missing data file":
        path = str(root / "nowhere.json")
        return {"data_path": path}, 2, ["data.data_path not found", path]
    if name == "truncated JSON":
        raw = open(user["text_train"], "rb").read()
        path = root / "truncated.json"
        path.write_bytes(raw[: len(raw) // 2])
        return {"data_path": str(path)}, 1, [str(path), "malformed JSON at line"]
    if name == "empty file":
        path = root / "empty.json"
        path.write_bytes(b"")
        return {"data_path": str(path)}, 1, [str(path), "holds no record"]
    if name == "missing image folder":
        folder = str(root / "no_images")
        return {**captions, "image_folder": folder}, 2, ["data.image_folder not found", folder, "have an image"]
    if name == "skip_bad_samples false":
        records = _records(user["text_train"])
        records[3] = {"id": "robot-talk", "conversations": [{"from": "robot", "value": "x"},
                                                            {"from": "gpt", "value": "y"}]}
        path = root / "one_bad.json"
        path.write_text(json.dumps(records, indent=1), encoding="utf-8")
        return ({"data_path": str(path), "skip_bad_samples": False}, 1,
                [str(path), "sample id 'robot-talk'", "bad_role", "data.skip_bad_samples is false"])
    if name == "non-UTF-8 JSON list":
        path, offset = _non_utf8_list(user, root)
        return ({**captions, "data_path": path}, 1,
                [path, f"invalid UTF-8 byte e9 at byte offset {offset}", "in list element 5"])
    if name.startswith("non-UTF-8 JSONL"):
        path, offset = _non_utf8_lines(user, root)
        backend = name.split()[-1]
        return ({**captions, "data_path": path, "skip_bad_samples": False, "backend": backend, "num_workers": 2}, 1,
                [path, f"invalid UTF-8 byte e9 at byte offset {offset}", "line 5"])
    raise KeyError(name)


TRAIN_ROWS = ["missing data file", "truncated JSON", "empty file", "missing image folder", "skip_bad_samples false",
              "non-UTF-8 JSON list", "non-UTF-8 JSONL python", "non-UTF-8 JSONL mindspore"]


@pytest.mark.parametrize("row", TRAIN_ROWS)
def test_train_on_bad_data_is_one_line(user, tmp_path, row):
    data, code, fragments = make_row(row, user, tmp_path)
    config = stage0_yaml(tmp_path / "run.yaml", user, tmp_path / "out", data)
    result = cli("train", "--config", config, cwd=tmp_path)
    line = assert_one_line_error(result, code, *fragments)
    assert result.stderr.strip().splitlines() == [line]  # the frameworks' start-up warnings are silenced
    assert not (tmp_path / "output").exists() and not (tmp_path / "rank_0").exists()  # no logs in the cwd


def test_debug_adds_the_traceback(tmp_path):
    missing = str(tmp_path / "nowhere.json")
    result = cli("data", "check", missing, "--debug", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" in result.stderr and "MissingDataError" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"eve-ms data check: error: data file not found: {missing}"


@pytest.mark.parametrize("row", ["empty file", "non-UTF-8 JSON list", "non-UTF-8 JSONL python", "missing data file",
                                 "missing image folder"])
def test_data_check_agrees_on_bad_files(user, tmp_path, row):
    data, code, fragments = make_row(row, user, tmp_path)
    args = ["data", "check", data["data_path"]]
    if "image_folder" in data:
        args += ["--image-folder", data["image_folder"]]
    result = cli(*args, cwd=tmp_path)
    # data check names its arguments, not yaml keys, and checks the image folder before reading the file
    fragments = [f for f in fragments if not f.startswith("data.") and f != "have an image"]
    line = assert_one_line_error(result, code, *fragments)
    if code == 1:
        assert result.stdout.strip().endswith("FAILED"), result.stdout
    else:
        assert "not found" in line


# ------------------------------------------------------------------------------------------ checkpoints


def _toy_yaml(path, out, keep=2) -> str:
    raw = {
        "task": TOY_TASK, "seed": 0, "output_dir": str(out),
        "context": {"mode": 0, "runtime_num_threads": 2},
        "runner_config": {"batch_size": 4, "epochs": 1},  # 24 samples: 6 steps
        "lr_schedule": {"learning_rate": 0.05, "warmup_ratio": 0.2},
        "checkpoint": {"save_checkpoint_steps": 2, "keep_checkpoint_max": keep},
        "logging": {"progress_bar": False, "plot_at_end": False, "tensorboard": False},
    }
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(raw, fh, sort_keys=False)
    return str(path)


def test_resume_without_a_usable_checkpoint_stops_and_lists_why(tmp_path):
    out = tmp_path / "run"
    config = _toy_yaml(tmp_path / "toy.yaml", out)
    assert cli("train", "--config", config, cwd=tmp_path).returncode == 0
    saved = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in saved] == ["step_00000004.safetensors", "step_00000006.safetensors"]

    # step 6: one digit of the data position in the header changed; step 4: a tensor byte flipped
    raw = bytearray(saved[1].read_bytes())
    at = raw.index(b'position\\": ') + len(b'position\\": ')
    raw[at] = ord("3") if raw[at] != ord("3") else ord("5")
    saved[1].write_bytes(bytes(raw))
    raw = bytearray(saved[0].read_bytes())
    raw[-1] ^= 0xFF
    saved[0].write_bytes(bytes(raw))
    before = {p: p.read_bytes() for p in saved}

    result = cli("train", "--config", config, "--resume", cwd=tmp_path)
    line = assert_one_line_error(result, 1, "--resume: none of the 2 checkpoint(s)", "step_00000006.safetensors",
                                 "corrupt header", "step_00000004.safetensors", "checksum mismatch",
                                 "--resume-or-start")
    assert {p: p.read_bytes() for p in saved} == before, line  # nothing was overwritten

    restarted = cli("train", "--config", config, "--resume-or-start", cwd=tmp_path)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "starting at step 0" in restarted.stdout and "training 6 step(s) from step 0" in restarted.stdout


def test_resume_in_an_empty_folder_is_an_error(tmp_path):
    config = _toy_yaml(tmp_path / "toy.yaml", tmp_path / "fresh")
    result = cli("train", "--config", config, "--resume", cwd=tmp_path)
    assert_one_line_error(result, 1, "no checkpoint in", "run without --resume")


# ------------------------------------------------------------------------------------------ training runs


def test_one_epoch_reports_its_skips_and_a_stalled_run_warns(user, tmp_path):
    """The paper configs' single epoch: the skip report is printed and logged; learning rate 1e6: a health warning."""
    from eve_ms.training.metrics import read_log

    records = _records(user["text_train"])[:12]
    records[2] = {"id": "no-talk", "conversations": []}
    records[7] = {"id": "robot-talk", "conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]}
    path = tmp_path / "text.json"
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    out = tmp_path / "out"
    config = stage0_yaml(tmp_path / "run.yaml", user, out, {"data_path": str(path), "max_length": 32},
                         runner_config={"epochs": 1, "batch_size": 2},  # 10 good samples: 5 steps
                         lr_schedule={"learning_rate": 1.0e6, "warmup_ratio": 0.0}, health={"stall_steps": 3})
    result = cli("train", "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data report, epoch 0 (rank 0): 2 samples skipped" in result.stdout, result.stdout
    assert "no-talk" in result.stdout and "robot-talk" in result.stdout
    assert "warning: training health: the loss has stayed at" in result.stdout
    events = [r for r in read_log(str(out / "train_log.jsonl"), events=True) if "event" in r]
    reports = [e for e in events if e["event"] == "data_report"]
    assert len(reports) == 1 and reports[0]["complete"] and reports[0]["skipped"] == 2
    refs = reports[0]["refs"]
    assert refs["missing_conversations"] == ["no-talk"] and refs["bad_role"] == ["robot-talk"]
    health = [e for e in events if e["event"] == "training_health"]
    assert len(health) == 1 and health[0]["stalled_steps"] == 3 and not health[0]["stop"]
    steps = read_log(str(out / "train_log.jsonl"))
    stalled = [s for s in steps if health[0]["step"] - 3 < s["step"] <= health[0]["step"]]
    assert len(stalled) == 3 and all(s["grad_norm"] == 0.0 for s in stalled)


# ------------------------------------------------------------------------------------------ checkpoints given


@pytest.mark.parametrize("command", ["chat", "convert"])
def test_a_lora_checkpoint_where_a_merged_one_is_needed_names_merged(tmp_path, command):
    """Stage 2's output folder holds its LoRA weights unmerged; chat, eval and convert need its merged/ folder."""
    import numpy as np

    from eve_ms.config import load_eve_config, save_eve_config
    from eve_ms.training.checkpoint import write_safetensors

    stage2 = tmp_path / "stage2"
    for folder in (stage2, stage2 / "merged"):
        folder.mkdir(parents=True, exist_ok=True)
        save_eve_config(load_eve_config(os.path.join(TINY, "stage2.yaml")), str(folder / "model_config.yaml"))
    lora = "llm.model.layers.0.self_attn.q_proj.mindpet_delta_lora_a"
    write_safetensors(str(stage2 / "model.safetensors"), {lora: np.zeros((8, 64), np.float32)})
    write_safetensors(str(stage2 / "merged" / "model.safetensors"), {"x": np.zeros(1, np.float32)})
    if command == "chat":
        result = cli("chat", "--checkpoint", str(stage2), "--prompt", "Hi", cwd=tmp_path)
    else:
        result = cli("convert", "to-hf-llm", "--src", str(stage2), "--out", str(tmp_path / "hf"), cwd=tmp_path)
    assert_one_line_error(result, 2, "unmerged LoRA weights", f"use {stage2 / 'merged'}{os.sep}")
