"""MMBench: rotations of the options, answer extraction from free text, circular scoring."""
import os

import pytest

from eve_ms.eval import mmbench
from eve_ms.eval.question import DataFormatError


def test_plain_tsv_is_expanded_into_one_question_per_rotation(fixtures_dir):
    questions = mmbench.load(os.path.join(fixtures_dir, "mmbench", "mmbench_dev_plain.tsv"))
    assert [q.id for q in questions] == ["0/r0", "0/r1", "0/r2", "1/r0", "1/r1"]
    assert [q.fields["options"] for q in questions[:3]] == [["cat", "dog", "bird"], ["dog", "bird", "cat"],
                                                            ["bird", "cat", "dog"]]
    # the right option ("dog") keeps its text, its letter moves with the rotation
    assert [q.answer for q in questions] == ["B", "A", "C", "A", "B"]
    assert {q.group for q in questions[:3]} == {"0"} and {q.group for q in questions[3:]} == {"1"}
    assert all(q.image_b64 for q in questions)


def test_prompt_lists_hint_question_and_lettered_options(fixtures_dir):
    first, *_, last = mmbench.load(os.path.join(fixtures_dir, "mmbench", "mmbench_dev_plain.tsv"))
    assert mmbench.build_prompt(first) == ("A photo taken in a park.\nWhat animal is shown?\nA. cat\nB. dog\nC. bird\n"
                                           "Answer with the option's letter from the given choices directly.")
    assert mmbench.build_prompt(last).startswith("How many dogs are there?\nA. two\nB. one\n")  # "nan" hint dropped


@pytest.mark.parametrize("response, options, letter", [
    ("B", ["cat", "dog"], "B"),
    ("(C) bird", ["cat", "dog", "bird"], "C"),
    ("The answer is D.", ["a", "b", "c", "d"], "D"),
    ("A cat is sitting on the mat", ["dog", "cat"], "B"),  # a lone "A" in a sentence is the article
    ("It is a dog", ["cat", "dog"], "B"),                  # option text
    ("B or C", ["cat", "dog", "bird"], None),              # two letters, no option text
    ("no idea", ["cat", "dog"], None),
])
def test_answer_extraction_without_a_judge_model(response, options, letter):
    assert mmbench.extract_choice(response, options) == letter


def test_a_question_counts_only_when_every_rotation_is_right(fixtures_dir):
    questions = mmbench.load(os.path.join(fixtures_dir, "mmbench", "mmbench_dev_plain.tsv"))
    responses = {"0/r0": "B", "0/r1": "A. dog", "0/r2": "The answer is cat",  # "cat" is B in rotation 2: wrong
                 "1/r0": "A", "1/r1": "(B)"}
    result = mmbench.score(questions, responses)
    assert result["questions"] == 2 and result["rows"] == 5
    assert result["score"] == pytest.approx(50.0)
    assert result["single_pass_accuracy"] == pytest.approx(100.0)
    assert result["circular_accuracy_by_category"] == pytest.approx({"image_emotion": 0.0, "object_counting": 100.0})


def test_already_circular_tsv_groups_rows_by_index_modulo_a_million(fixtures_dir):
    questions = mmbench.load(os.path.join(fixtures_dir, "mmbench", "mmbench_dev_circular.tsv"))
    assert [(q.id, q.group, q.answer) for q in questions] == [
        ("5", "5", "A"), ("6", "6", "B"), ("1000005", "5", "C"), ("1000006", "6", "A"), ("2000005", "5", "B")]
    right = {"5": "A", "6": "B", "1000005": "apple", "1000006": "A", "2000005": "B"}
    assert mmbench.score(questions, right)["score"] == pytest.approx(100.0)
    one_wrong = {**right, "2000005": "A"}
    assert mmbench.score(questions, one_wrong)["score"] == pytest.approx(50.0)


def test_rows_without_answers_are_rejected(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("index\tquestion\thint\tA\tB\tanswer\timage\n0\tq\t\tx\ty\t\tAAAA\n")
    with pytest.raises(DataFormatError, match="cannot be scored"):
        mmbench.load(str(path))
