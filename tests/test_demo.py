"""`eve-ms demo --quick` end to end: the report's fields and the claims, as the run measured them.

One quick run (about three minutes on a 2-core CPU) is shared by the tests that need it.
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
    assert "| run | seeds | VQA acc |" in markdown and "| claim | value | sd | met |" in markdown

    results = summary["results"]
    assert set(results) == {"stage0", "stage1", "stage2", "stage3"}  # quick: the Random run is routing only
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
    assert summary["variants"]["img_gbpr"]["vqa"] == {"mean": results["stage3"]["vqa"]["accuracy"], "sd": None,
                                                     "n": 1}


def test_stage3_data_is_multimodal_and_fills_its_sequences(quick_run):
    out, summary, _ = quick_run
    records = json.load(open(os.path.join(out, "data", "instruct_multimodal.json"), encoding="utf-8"))
    assert records and all("image" in r for r in records)
    stage2 = json.load(open(os.path.join(out, "data", "instruct.json"), encoding="utf-8"))
    text_only = sum("image" not in r for r in stage2)
    assert text_only == int(summary["plan"]["text_only_fraction"] * summary["plan"]["instruct_images"]) > 0
    seq = summary["sequence"]
    assert seq["image_tokens_per_sample"] == pytest.approx(36)  # 48 px in patches of 4, LDP 2 x 2
    assert 0.3 < seq["image_share"] < 0.6 and seq["fill"] > 0.9


def test_train_log_has_routing_per_layer_and_modality(quick_run):
    out, summary, _ = quick_run
    from eve_ms.training.metrics import read_log

    for name in ("stage3", "stage3_random"):
        records = read_log(os.path.join(out, name, "train_log.jsonl"))
        assert len(records) == summary["plan"]["variant_steps"].get(name.partition("_")[2] or "img_gbpr",
                                                                     summary["plan"]["steps"]["stage3"])
        for record in records:
            assert set(record["routing"]) == {"layer_0", "layer_2"}  # tiny LLM: 4 layers, EVF in alternate ones
            for layer, modalities in record["routing"].items():
                kept = dropped = valid = 0
                for counts in modalities.values():
                    assert counts["kept_language"] + counts["kept_vision"] + counts["dropped"] == counts["valid"]
                    kept += counts["kept_language"] + counts["kept_vision"]
                    dropped += counts["dropped"]
                    valid += counts["valid"]
                assert modalities["image"]["valid"] == 16 * 36  # every sample has one image
                assert record["token_success_rate"][layer] == pytest.approx(kept / valid)
    # Img-GBPR's prior sends every text token to the language expert and every image token to vision
    # unless that expert is full: nothing overflows while each modality is under the capacity (0.75 T)
    shares = summary["routing"]["img_gbpr"]["shares"]
    for layer in shares.values():
        assert layer["text"]["kept_vision"] <= layer["text"]["redistributed"]
        assert layer["image"]["kept_language"] <= layer["image"]["redistributed"]


def test_claims_hold_on_the_quick_run(quick_run):
    _, summary, log = quick_run
    claims = summary["claims"]
    assert set(claims) == {"lora_keeps_language", "evf_keeps_language", "capacity_binds"}
    for claim in claims.values():
        assert set(claim) == {"value", "sd", "met"}
    results = summary["results"]
    lora = results["stage2"]["language"]["accuracy"] - results["stage0"]["language"]["accuracy"]
    assert claims["lora_keeps_language"]["value"] == pytest.approx(lora)
    assert claims["capacity_binds"]["value"] == max(
        s["mean"] for s in summary["routing"]["random"]["start_over_capacity"].values())
    assert claims["lora_keeps_language"]["met"] and claims["evf_keeps_language"]["met"], (claims, log)
    # Whether a random router's first split overflows 0.75 T is a finding of the run, not something the
    # pipeline guarantees (docs/design.md): the claim must say what its value says ...
    assert claims["capacity_binds"]["met"] == (claims["capacity_binds"]["value"] >= report.BINDING_SHARE)
    # ... and in the quick plan it is met (the issue asks for its claims met): its short stage 2 leaves layer 2's
    # inputs lopsided enough that the seed-0 router sends 93 % of the text and 99 % of the image tokens one way
    # (0.191 over capacity, measured alike on two machines with different CPUs)
    assert claims["capacity_binds"]["met"], (claims, log)


def test_language_only_logits_bit_identical_after_stage3(quick_run):
    _, summary, _ = quick_run
    identity = summary["language_only_bit_identity"]
    assert identity["bit_identical"] and identity["max_abs_diff"] == 0.0
    assert identity["tokens"] > 100 and identity["runs"] == ["stage3"]


def test_table_printed_with_every_run(quick_run):
    _, summary, log = quick_run
    printed = report.table(summary)
    assert printed in log
    for label in ("stage 0 (LLM pretrain)", "stage 2 (adapter + LoRA, merged)", "stage 3 EVF, Img-GBPR",
                  "stage 3 EVF, Random", "capacity_binds: "):
        assert label in printed


def test_claims_from_measurements_over_seeds():
    """check_claims on a made-up summary of the full plan: means, paired sds, met as the numbers say."""
    def run(vqa, language):
        return {"vqa": {"accuracy": vqa, "by_type": {}}, "language": {"accuracy": language}}

    def routing(variant, success, start):
        runs = {pipeline.run_name(variant, i): {"mean_success": {"layer_0": s}} for i, s in enumerate(success)}
        return {"runs": runs, "mean_success": {"layer_0": report.mean_sd(success)},
                "start_over_capacity": {"layer_0": report.mean_sd(start)}}

    results = {"stage0": run(None, 0.80), "stage2": run(0.60, 0.78)}
    vqa = {"img_gbpr": (0.70, 0.72, 0.74), "gbpr": (0.69, 0.70, 0.71), "random": (0.70, 0.69, 0.68),
           "moe": (0.70, 0.70, 0.70)}
    for variant, scores in vqa.items():
        for seed, score in enumerate(scores):
            language = 0.78 if variant != "moe" else 0.70 + 0.01 * seed
            results[pipeline.run_name(variant, seed)] = run(score, language)
    summary = {"results": results, "plan": {"seeds": [0, 1, 2], "evaluated": list(vqa)},
               "language_only_bit_identity": {"bit_identical": True},
               "routing": {"img_gbpr": routing("img_gbpr", [1.0, 1.0, 1.0], [0, 0, 0]),
                           "gbpr": routing("gbpr", [0.8, 0.9, 1.0], [0.2, 0.1, 0.0]),
                           "random": routing("random", [0.8, 0.8, 0.8], [0.25, 0.2, 0.15])}}
    claims = report.check_claims(summary)
    assert claims["lora_keeps_language"] == {"value": pytest.approx(-0.02), "sd": None, "met": True}
    assert claims["evf_keeps_language"] == {"value": 0.0, "sd": 0.0, "met": True}
    assert claims["evf_gains_vqa"] == {"value": pytest.approx(0.12), "sd": pytest.approx(0.02), "met": True}
    assert claims["moe_costs_language"] == {"value": pytest.approx(-0.07), "sd": pytest.approx(0.01), "met": True}
    assert claims["capacity_binds"] == {"value": pytest.approx(0.2), "sd": pytest.approx(0.05), "met": True}
    # per layer: Img-GBPR 1.0 vs max(GBPR 0.9, Random 0.8); per seed 1 - max(.8,.8), 1 - .9, 1 - 1
    assert claims["img_gbpr_success_highest"] == {"value": pytest.approx(0.1), "sd": pytest.approx(0.1),
                                                  "met": True}
    # Img-GBPR - GBPR = 0.02, GBPR - Random = 0.01 (per seed -0.01, 0.01, 0.03): the smaller step
    assert claims["allocation_order_vqa"] == {"value": pytest.approx(0.01), "sd": pytest.approx(0.02),
                                              "met": True}
    results[pipeline.run_name("random", 1)] = run(0.80, 0.78)  # Random above GBPR on average now
    assert report.check_claims(summary)["allocation_order_vqa"]["met"] is False


def test_count_questions_are_answered_in_digits_not_the_language_evaluations_number_words():
    """Counts answer "2" (as VQAv2's do): number-word answers trained the words of the counting items."""
    import random

    objects = [synthetic.SceneObject("red", "circle", "top left"), synthetic.SceneObject("blue", "square", "top right")]
    count = next(q for q in synthetic.questions(objects, random.Random(0), max_objects=2) if q["type"] == "count")
    assert count["answer"] == "2" and count["options"] == ["1", "2"]
    language_words = {w.strip(" .") for q in synthetic._language_questions() for w in q["options"]}
    assert not set(count["options"]) & language_words


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
    assert set(longest) == {"text_train", "captions", "instruct", "instruct_multimodal"}
    # captions are the image tokens and a sentence; instruct samples also carry the v1 system prompt
    assert 4 < longest["captions"] < longest["instruct"]
    with pytest.raises(RuntimeError, match="text_train.json: a sample of .* tokens was truncated"):
        pipeline.longest_samples(paths, stage0, text_max_length=longest["text_train"] - 1)


def test_sigterm_to_the_parent_terminates_its_stage3_workers(tmp_path):
    """`--jobs N`: a SIGTERM to `eve-ms demo` ends its worker processes too (they were left running as orphans)."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    script = tmp_path / "parent.py"
    # time.sleep stands in for a stage-3 run: the same pool, workers busy when the signal comes
    script.write_text("import time\nfrom eve_ms.demo.pipeline import run_in_workers\n"
                      "if __name__ == '__main__':\n    run_in_workers(time.sleep, [120, 120], 2, print)\n")
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        workers, deadline = [], time.time() + 60
        while len(workers) < 2 and time.time() < deadline:
            time.sleep(0.1)
            workers = [p for p in psutil.Process(parent.pid).children()
                       if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2, "the pool's workers did not start"
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers still running after the parent ended: {alive}"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_routing_over_capacity_at_start_and_end_of_training(tmp_path):
    """run_routing's windows: the first and the last 10 % of the steps (at least 3), each the share of valid
    tokens dropped or redistributed, summed over the window; a learned router that drifts onto one expert shows
    at the end, not at the start."""
    os.makedirs(tmp_path / "stage3_random")
    records = []
    for step in range(1, 41):
        dropped = 0 if step <= 20 else step - 20  # the router drifts past the capacity half-way through
        text = {"valid": 60, "kept_language": 40 - dropped, "kept_vision": 20, "dropped": dropped, "redistributed": 0}
        image = {"valid": 40, "kept_language": 10, "kept_vision": 30, "dropped": 0, "redistributed": 0}
        records.append({"step": step, "loss": 1.0, "token_success_rate": {"layer_0": (100 - dropped) / 100},
                        "routing": {"layer_0": {"text": text, "image": image}}})
    with open(tmp_path / "stage3_random" / "train_log.jsonl", "w", encoding="utf-8") as fh:
        fh.write("\n".join(json.dumps(r) for r in records) + "\n")
    routing = report.run_routing(str(tmp_path), "stage3_random")
    assert routing["start_over_capacity"]["layer_0"] == 0.0
    assert routing["end_over_capacity"]["layer_0"] == pytest.approx((18 + 19 + 20 + 17) / 400)  # steps 37-40
    assert routing["over_capacity"]["layer_0"] == pytest.approx(sum(range(1, 21)) / 4000)
    summary = report.routing_summary(str(tmp_path), ["stage3_random"])
    assert summary["end_over_capacity"]["layer_0"]["mean"] == pytest.approx(74 / 400)
