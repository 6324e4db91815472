"""The resumable runner and `eve-ms eval`: answers appended as they come, reruns ask only the rest."""
import hashlib
import json
import os
import sys
import types

import pytest
from PIL import Image

from eve_ms import cli
from eve_ms.eval import run as eval_run
from eve_ms.eval.registry import get_benchmark
from eve_ms.eval.runner import evaluate, read_answers

POPE_ANSWERS = {
    "random/1": "Yes, there is a dog.", "random/2": "No.", "random/3": "No, there is not.", "random/4": "Yes",
    "popular/1": "yes", "popular/2": "yes", "popular/3": "There is not a cat.", "popular/4": "I see a cat. No doubt.",
    "adversarial/1": "No", "adversarial/2": "Nope",
}
POPE_IMAGES = ["COCO_val2014_000000000001.jpg", "COCO_val2014_000000000002.jpg"]


@pytest.fixture
def pope_setup(fixtures_dir, tmp_path, touch_images):
    images = touch_images(tmp_path / "coco", POPE_IMAGES)
    return os.path.join(fixtures_dir, "pope"), images


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_items_carry_prompt_image_and_generation_hint(pope_setup, tmp_path, fake_generator):
    data, images = pope_setup
    predictor = fake_generator(POPE_ANSWERS)
    evaluate("pope", data, images, predictor, str(tmp_path / "a.jsonl"), batch_size=4, progress=False)
    item = predictor.calls[0][0]
    assert set(item) == {"id", "prompt", "image", "max_new_tokens", "chat", "truncate"}
    assert item["prompt"].endswith("\nAnswer the question using a single word or phrase.")
    assert os.path.isfile(item["image"]) and item["max_new_tokens"] == 128  # model_vqa_loader.py's default
    assert item["chat"] is True and item["truncate"] is False
    assert [len(call) for call in predictor.calls] == [4, 4, 2]


def test_interrupted_run_resumes_with_only_the_unanswered_questions(pope_setup, tmp_path, fake_generator):
    data, images = pope_setup
    answers = str(tmp_path / "out" / "pope_answers.jsonl")
    interrupted = fake_generator(POPE_ANSWERS, fail_on_call=3)  # two batches of two are written, then it dies
    with pytest.raises(RuntimeError, match="simulated interruption"):
        evaluate("pope", data, images, interrupted, answers, batch_size=2, progress=False)
    written = [record["id"] for record in _lines(answers)[1:]]  # after the header
    assert len(written) == 4

    resumed = fake_generator(POPE_ANSWERS)
    result = evaluate("pope", data, images, resumed, answers, batch_size=2, progress=False)
    assert len(resumed.asked_ids) == 6
    assert sorted(resumed.asked_ids) == sorted(set(POPE_ANSWERS) - set(written))
    assert sorted(r["id"] for r in _lines(answers)[1:]) == sorted(POPE_ANSWERS)  # each answered once

    clean = evaluate("pope", data, images, fake_generator(POPE_ANSWERS), str(tmp_path / "clean.jsonl"),
                     batch_size=3, progress=False)
    assert result["metrics"] == clean["metrics"]
    assert result["score"] == pytest.approx((50 + 80 + 100) / 3)

    again = fake_generator(POPE_ANSWERS)
    evaluate("pope", data, images, again, answers, progress=False)
    assert again.calls == []


def test_a_line_cut_off_mid_write_is_dropped_and_asked_again(pope_setup, tmp_path, fake_generator):
    data, images = pope_setup
    answers = tmp_path / "a.jsonl"
    evaluate("pope", data, images, fake_generator(POPE_ANSWERS), str(answers), limit=1, progress=False)
    header = answers.read_text().splitlines()[0]
    answers.write_text(header + '\n{"id": "random/1", "prompt": "p", "prediction": "Yes"}\n{"id": "random/2", "pro')
    predictor = fake_generator(POPE_ANSWERS)
    with pytest.warns(UserWarning, match="cut off"):
        evaluate("pope", data, images, predictor, str(answers), progress=False)
    assert "random/1" not in predictor.asked_ids and "random/2" in predictor.asked_ids
    assert len(_lines(answers)) == 1 + len(POPE_ANSWERS)


def test_a_corrupt_line_before_the_end_is_an_error(tmp_path):
    answers = tmp_path / "a.jsonl"
    answers.write_text('{"id": "x", "prediction": "yes"}\nnot json\n{"id": "y", "prediction": "no"}\n')
    with pytest.raises(ValueError, match="a.jsonl:2"):
        read_answers(str(answers), "generate")
    answers.write_text('{"id": "x", "logliks": [0.0]}\n')
    with pytest.raises(ValueError, match="'prediction'"):
        read_answers(str(answers), "generate")


def test_limit_keeps_whole_units(fixtures_dir, tmp_path, touch_images, fake_generator):
    images = touch_images(tmp_path / "mme", ["existence/img1.jpg", "existence/img2.jpg", "OCR/o1.png"])
    predictor = fake_generator({"existence/img1.jpg/0": "Yes", "existence/img1.jpg/1": "No",
                                "existence/img2.jpg/0": "No", "existence/img2.jpg/1": "No"})
    result = evaluate("mme", os.path.join(fixtures_dir, "mme"), images, predictor, str(tmp_path / "a.jsonl"),
                      limit=2, progress=False)
    assert result["questions"] == 4  # two images, both questions of each
    assert result["metrics"]["subtasks"]["existence"]["acc_plus"] == pytest.approx(50.0)
    assert result["score"] == pytest.approx(75.0 + 50.0)


def test_missing_image_is_named(fixtures_dir, tmp_path, fake_generator):
    with pytest.raises(FileNotFoundError, match="question adversarial/1 not found"):
        evaluate("pope", os.path.join(fixtures_dir, "pope"), str(tmp_path), fake_generator(POPE_ANSWERS),
                 str(tmp_path / "a.jsonl"), progress=False)


def test_embedded_images_reach_the_predictor_decoded(fixtures_dir, tmp_path, fake_generator):
    predictor = fake_generator({"5": "A", "6": "B", "1000005": "C", "1000006": "A", "2000005": "B"})
    result = evaluate("mmbench", os.path.join(fixtures_dir, "mmbench", "mmbench_dev_circular.tsv"), None, predictor,
                      str(tmp_path / "a.jsonl"), progress=False)
    image = predictor.calls[0][0]["image"]
    assert isinstance(image, Image.Image) and image.size == (2, 1)
    assert result["score"] == pytest.approx(100.0)


def test_predictor_returning_the_wrong_number_of_answers_is_an_error(pope_setup, tmp_path):
    data, images = pope_setup

    class Short:
        def predict(self, items):
            return ["yes"] * (len(items) - 1)

    with pytest.raises(ValueError, match="returned 1 answers for 2 questions"):
        evaluate("pope", data, images, Short(), str(tmp_path / "a.jsonl"), batch_size=2, progress=False)


def test_cli_sets_up_the_context_writes_answers_and_results_and_resumes(pope_setup, tmp_path, monkeypatch,
                                                                      fake_generator, capsys):
    import eve_ms.runtime

    data, images = pope_setup
    built, contexts = [], []

    def fake_load_predictor(checkpoint_dir, **kw):
        built.append((checkpoint_dir, kw))
        built.append(fake_generator(POPE_ANSWERS))
        return built[-1]

    monkeypatch.setattr(eval_run, "load_predictor", fake_load_predictor)
    monkeypatch.setattr(eve_ms.runtime, "setup_context", lambda *args: contexts.append(args))
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    out = tmp_path / "out"
    argv = ["eval", "--benchmark", "pope", "--data", data, "--image-folder", images, "--checkpoint", str(checkpoint),
            "--output", str(out), "--batch-size", "3", "--no-progress", "--device-target", "CPU", "--num-threads", "2"]
    assert cli.main(argv) == 0
    # CPU: graph mode and float32 unless asked otherwise (PyNative and float16 are slow there, eval/run.py)
    assert contexts == [("CPU", "graph", 2)]
    assert built[0] == (str(checkpoint), {"batch_size": 3, "template": "v1", "compute_dtype": "float32",
                                          "length_bucket": 64})
    results = json.loads((out / "pope_results.json").read_text())
    assert results["score"] == pytest.approx((50 + 80 + 100) / 3)
    assert results["metrics"]["splits"]["popular"]["f1"] == pytest.approx(80.0)
    lines = _lines(out / "pope_answers.jsonl")
    assert len(lines) == 1 + 10
    model = lines[0]["eve_ms_answers"]["model"]
    assert model["checkpoint"] == str(checkpoint) and model["compute_dtype"] == "float32"
    assert model["weights_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert lines[0]["eve_ms_answers"]["generation"]["max_new_tokens"] == 128
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["questions"] == 10

    assert cli.main(argv) == 0
    assert built[-1].calls == []  # everything was answered by the first run

    ascend = argv[:argv.index("--device-target")] + ["--device-target", "Ascend", "--output", str(tmp_path / "npu")]
    assert cli.main(ascend) == 0  # elsewhere the protocol's float16, in PyNative
    assert contexts[-1] == ("Ascend", "pynative", None)
    assert built[-2] == (str(checkpoint), {"batch_size": 3, "template": "v1", "compute_dtype": "float16"})
    half = argv + ["--compute-dtype", "float16", "--output", str(tmp_path / "half")]
    assert cli.main(half) == 0  # float16 on CPU stays in PyNative: graph mode with float16 is not verified
    assert contexts[-1] == ("CPU", "pynative", 2)
    assert built[-2] == (str(checkpoint), {"batch_size": 3, "template": "v1", "compute_dtype": "float16"})


def test_cli_flags_reach_the_predictor_and_the_protocol(pope_setup, tmp_path, monkeypatch, fake_generator):
    import eve_ms.runtime

    data, images = pope_setup
    built = []
    monkeypatch.setattr(eval_run, "load_predictor",
                        lambda checkpoint_dir, **kw: built.append(kw) or fake_generator(POPE_ANSWERS))
    monkeypatch.setattr(eve_ms.runtime, "setup_context", lambda *args: None)
    argv = ["eval", "--benchmark", "pope", "--data", data, "--image-folder", images, "--checkpoint", "ckpt",
            "--output", str(tmp_path), "--no-progress", "--template", "plain", "--compute-dtype", "float32",
            "--max-new-tokens", "7", "--exec-mode", "graph"]
    assert cli.main(argv) == 0
    assert built[0]["template"] == "plain" and built[0]["compute_dtype"] == "float32"
    assert built[0]["length_bucket"] == 64
    header = _lines(tmp_path / "pope_answers.jsonl")[0]["eve_ms_answers"]
    assert header["generation"]["max_new_tokens"] == 7 and header["model"]["template"] == "plain"


@pytest.mark.parametrize("name, tokens", [("gqa", 128), ("textvqa", 128), ("pope", 128), ("mme", 128),
                                               ("scienceqa_img", 1024), ("mmbench", 1024), ("xsum", 100)])
def test_generation_budgets_are_the_reference_scripts(name, tokens):
    assert get_benchmark(name).max_new_tokens == tokens


def test_load_predictor_imports_the_inference_module_only_when_called(monkeypatch):
    fake_module = types.ModuleType("eve_ms.inference.predictor")
    fake_module.build_predictor = lambda checkpoint_dir, **kw: ("model", checkpoint_dir, kw)
    monkeypatch.setitem(sys.modules, "eve_ms.inference.predictor", fake_module)
    assert eval_run.load_predictor("ckpt", batch_size=4) == ("model", "ckpt", {"batch_size": 4})
    monkeypatch.setitem(sys.modules, "eve_ms.inference.predictor", None)  # module absent
    with pytest.raises(RuntimeError, match="eve_ms.inference.predictor is not available"):
        eval_run.load_predictor("ckpt")
