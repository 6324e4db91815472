"""`eve-ms demo --quick` end to end: the report's fields and the claims, as the run measured them.

One quick run (about three minutes on a 2-core CPU) is shared by every test in this module.
"""
import json
import os

import numpy as np
import pytest

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
