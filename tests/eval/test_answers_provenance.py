"""Answers files record what produced them; resuming into one made otherwise stops; one writer at a time."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import released_formats as formats

from eve_ms.eval.provenance import AnswersFileError, AnswersLock
from eve_ms.eval.runner import evaluate

MODEL_A = {"checkpoint": "/ckpt/stage3-a", "weights_sha256": "a" * 64, "template": "v1", "compute_dtype": "float16"}
MODEL_B = {**MODEL_A, "checkpoint": "/ckpt/stage3-b", "weights_sha256": "b" * 64}
RULES = [("sun a star", {"No": 2.0, "Yes": 1.0}), ("whale a fish", {"No": 1.0, "Yes": 3.0}),
         ("penguins fly", {"No": 0.5, "Yes": 0.7})]


@pytest.fixture
def boolq(tmp_path):
    return formats.write_boolq(tmp_path / "data"), str(tmp_path / "out" / "boolq_answers.jsonl")


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_the_first_line_records_model_benchmark_and_settings(boolq, fake_choice):
    data, answers = boolq
    evaluate("boolq", data, None, fake_choice(RULES), answers, model=MODEL_A, progress=False)
    header = _lines(answers)[0]["eve_ms_answers"]
    model = {k: v for k, v in MODEL_A.items() if k != "template"}  # plain text: no conversation template
    assert header == {"format": 1, "benchmark": "boolq", "model": model,
                      "prompt": {"template": "opencompass_ppl", "shots": 0, "scoring": "ppl"}}
    assert [r["id"] for r in _lines(answers)[1:]] == ["0", "1", "2"]


def test_resuming_with_another_checkpoint_stops_naming_both(boolq, fake_choice):
    data, answers = boolq
    evaluate("boolq", data, None, fake_choice(RULES), answers, model=MODEL_A, limit=2, progress=False)
    other = fake_choice(RULES)
    with pytest.raises(AnswersFileError) as err:
        evaluate("boolq", data, None, other, answers, model=MODEL_B, progress=False)
    message = str(err.value)
    assert answers in message and "/ckpt/stage3-a" in message and "/ckpt/stage3-b" in message
    assert "model.weights_sha256" in message and "--overwrite" in message
    assert other.calls == [] and len(_lines(answers)) == 1 + 2  # nothing asked, nothing written


def test_resuming_with_other_settings_stops(boolq, fake_choice, pope_files, fake_generator):
    data, answers = boolq
    evaluate("boolq", data, None, fake_choice(RULES), answers, model=MODEL_A, progress=False)
    with pytest.raises(AnswersFileError, match="prompt.scoring: file 'ppl', this run 'loglik'"):
        evaluate("boolq", data, None, fake_choice(RULES), answers, model=MODEL_A, scoring="loglik", progress=False)

    pope_data, images, pope_answers = pope_files
    evaluate("pope", pope_data, images, fake_generator(POPE), pope_answers, model=MODEL_A, limit=1, progress=False)
    with pytest.raises(AnswersFileError, match="generation.max_new_tokens: file 128, this run 16"):
        evaluate("pope", pope_data, images, fake_generator(POPE), pope_answers, model=MODEL_A, max_new_tokens=16,
                 progress=False)


def test_overwrite_starts_over(boolq, fake_choice):
    data, answers = boolq
    evaluate("boolq", data, None, fake_choice(RULES), answers, model=MODEL_A, progress=False)
    again = fake_choice(RULES)
    result = evaluate("boolq", data, None, again, answers, model=MODEL_B, overwrite=True, progress=False)
    lines = _lines(answers)
    assert lines[0]["eve_ms_answers"]["model"]["checkpoint"] == "/ckpt/stage3-b" and len(lines) == 1 + 3
    assert len(again.calls[0][1]) == 6 and result["score"] == pytest.approx(100.0)


def test_a_file_without_a_header_is_not_resumed(boolq, fake_choice):
    data, answers = boolq
    os.makedirs(os.path.dirname(answers))
    with open(answers, "w") as f:
        f.write('{"id": "0", "logliks": [-1.0, -2.0]}\n')
    with pytest.raises(AnswersFileError, match="no provenance header.*--overwrite"):
        evaluate("boolq", data, None, fake_choice(RULES), answers, progress=False)


def test_a_second_writer_stops_while_the_first_holds_the_lock(boolq, fake_choice):
    data, answers = boolq
    os.makedirs(os.path.dirname(answers))
    with AnswersLock(answers):
        with pytest.raises(AnswersFileError, match=f"being written by another process \\(pid {os.getpid()}"):
            evaluate("boolq", data, None, fake_choice(RULES), answers, progress=False)
    assert evaluate("boolq", data, None, fake_choice(RULES), answers, progress=False)["questions"] == 3


def test_the_lock_of_another_process_holds_until_it_dies(boolq, fake_choice):
    data, answers = boolq
    os.makedirs(os.path.dirname(answers))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from eve_ms.eval.provenance import AnswersLock
        with AnswersLock({answers!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(AnswersFileError, match=f"pid {holder.pid}"):
            evaluate("boolq", data, None, fake_choice(RULES), answers, progress=False)
    finally:
        holder.kill()  # a crash: no clean exit, the kernel drops the lock
        holder.wait()
    assert evaluate("boolq", data, None, fake_choice(RULES), answers, progress=False)["questions"] == 3


POPE = {"random/1": "yes", "random/2": "no", "random/3": "no", "random/4": "yes", "popular/1": "yes",
        "popular/2": "yes", "popular/3": "no", "popular/4": "no", "adversarial/1": "no", "adversarial/2": "no"}


@pytest.fixture
def pope_files(fixtures_dir, tmp_path, touch_images):
    images = touch_images(tmp_path / "coco", ["COCO_val2014_000000000001.jpg", "COCO_val2014_000000000002.jpg"])
    return os.path.join(fixtures_dir, "pope"), images, str(tmp_path / "pope" / "pope_answers.jsonl")
