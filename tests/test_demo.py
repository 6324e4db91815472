"""`eve-ms demo --quick` end to end: the report's fields and the claims, as the run measured them.

One quick run (about three minutes on a 2-core CPU) is shared by every test in this module.
"""
import json
import os

import numpy as np
import pytest
import yaml

from eve_ms.demo import pipeline, report, synthetic


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    lines = []
    summary = pipeline.run_demo(out, quick=True, log=lines.append)
    return out, summary, "\n".join(lines)


def test_report_files_and_fields(quick_run):
    out, summary, _ = quick_run
    on_disk = json.load(open(os.path.join(out, "report.json"), encoding="utf-8"))
    assert on_disk["claims"] == summary["claims"]
    for name in ("loss_per_stage.png", "token_success_rate.png", "accuracy_per_stage.png"):
        path = os.path.join(out, "plots", name)
        assert os.path.getsize(path) > 1000, path
    markdown = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "| run | VQA acc |" in markdown and "chance" in markdown

    results = summary["results"]
    assert set(results) == {"stage0", "stage1", "stage2", "stage3"}  # quick: no ablations
    for name in ("stage1", "stage2", "stage3"):
        vqa = results[name]["vqa"]
        assert 0.0 <= vqa["accuracy"] <= 1.0
        assert set(vqa["by_type"]) == {"colour", "shape", "position", "presence"}
    for name in ("stage0", "stage2", "stage3"):
        language = results[name]["language"]
        assert language["chance"] < language["accuracy"] <= 1.0
        assert np.isfinite(language["loss"])
    # stage 0 stands in for a pretrained LLM: well above chance on its language evaluation
    assert results["stage0"]["language"]["accuracy"] >= results["stage0"]["language"]["chance"] + 0.3

    layers = results["stage3"]["vqa"]["routing"]["layers"]
    assert len(layers) == 2  # tiny LLM: 4 layers, EVF in the alternate ones
    for layer in layers:
        assert 0.0 < layer["success_rate"] <= 1.0


def test_chance_level_is_what_the_options_give(quick_run):
    out, summary, _ = quick_run
    items = json.load(open(os.path.join(out, "data", "vqa_eval.json"), encoding="utf-8"))
    expected = np.mean([1.0 / len(item["options"]) for item in items])
    assert summary["vqa_chance"] == pytest.approx(expected)
    assert summary["vqa_chance"] == pytest.approx(synthetic.chance_accuracy(items))


def test_claims_hold_on_the_quick_run(quick_run):
    _, summary, log = quick_run
    results, chance = summary["results"], summary["vqa_chance"]
    stage3 = results["stage3"]["vqa"]["accuracy"]
    assert stage3 >= chance + report.CLAIM_MARGIN, log
    assert stage3 > results["stage1"]["vqa"]["accuracy"], log
    assert all(summary["claims"].values()), summary["claims"]


def test_language_only_logits_bit_identical_after_stage3(quick_run):
    _, summary, _ = quick_run
    identity = summary["language_only_bit_identity"]
    assert identity["bit_identical"] and identity["max_abs_diff"] == 0.0
    assert identity["tokens"] > 100


def test_table_printed_with_every_run(quick_run):
    _, summary, log = quick_run
    printed = report.table(summary)
    assert printed in log
    for name in summary["results"]:
        assert report.LABELS[name] in printed


def _stage0_dir(tmp_path, paths):
    """What stage 0 leaves for `longest_samples`: the tiny model config and a tokenizer trained on the data."""
    from eve_ms.config import load_eve_config, save_eve_config
    from eve_ms.data.tokenizer import conversation_texts, train_bpe_tokenizer

    stage0 = tmp_path / "stage0"
    stage0.mkdir()
    base = os.path.join(pipeline.REPO_CONFIGS, "base.yaml")
    model_config = yaml.safe_load(open(base, encoding="utf-8"))["model"]["model_config"]
    model_config.pop("type", None)
    config_path = tmp_path / "tiny_model.yaml"
    config_path.write_text(yaml.safe_dump(model_config))
    save_eve_config(load_eve_config(str(config_path)), str(stage0 / "model_config.yaml"))
    texts = sum((conversation_texts(paths[k]) for k in ("text_train", "captions", "instruct")), [])
    train_bpe_tokenizer(texts, 512, save_dir=str(stage0 / "tokenizer"))
    return str(stage0)


def test_longest_samples_measures_every_data_set_and_guards_stage0s_bound(tmp_path):
    paths = synthetic.generate(str(tmp_path / "data"), seed=3, image_size=32, max_objects=2, num_caption=20,
                               num_instruct_images=30, num_eval_images=2, num_text_descriptions=20,
                               num_text_scene_questions=20)
    stage0 = _stage0_dir(tmp_path, paths)
    longest = pipeline.longest_samples(paths, stage0, text_max_length=256)
    assert set(longest) == {"text_train", "captions", "instruct"}
    # captions are the image tokens and a sentence; instruct samples also carry the v1 system prompt
    assert 4 < longest["captions"] < longest["instruct"]
    with pytest.raises(RuntimeError, match="text_train.json: a sample of .* tokens was truncated"):
        pipeline.longest_samples(paths, stage0, text_max_length=longest["text_train"] - 1)
