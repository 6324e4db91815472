"""GQA, TextVQA, ScienceQA-IMG, POPE and MME: loaders on tiny released-format fixtures and scorers
against values worked out by hand."""
import os

import pytest
import released_formats as formats

from eve_ms.eval import gqa, mme, pope, scienceqa, textvqa
from eve_ms.eval.question import DataFormatError


def _responses(questions, answers_in_order):
    assert len(questions) == len(answers_in_order)
    return {q.id: a for q, a in zip(questions, answers_in_order)}


# ---- GQA ----

def test_gqa_loads_official_questions_with_image_paths(fixtures_dir):
    questions = gqa.load(os.path.join(fixtures_dir, "gqa", "testdev_balanced_questions.json"), "/imgs")
    assert [q.id for q in questions] == ["201", "202", "203", "204"]
    assert questions[0].image == os.path.join("/imgs", "n1.jpg")
    assert gqa.build_prompt(questions[0]) == ("What color is the car?\n"
                                              "Answer the question using a single word or phrase.")


def test_gqa_exact_match_after_normalisation(fixtures_dir):
    questions = gqa.load(os.path.join(fixtures_dir, "gqa", "testdev_balanced_questions.json"), None)
    result = gqa.score(questions, _responses(questions, ["Red.", "yes", "The left", "umbrellas"]))
    assert result["correct"] == 2 and result["score"] == pytest.approx(50.0)
    assert result["accuracy_by_structural_type"] == pytest.approx({"query": 100 / 3, "verify": 100.0})


# ---- TextVQA ----

@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_averages_min_n_over_3_over_the_ten_leave_one_out_subsets(matches, expected):
    humans = ["yes"] * matches + ["no"] * (10 - matches)
    assert textvqa.vqa_accuracy("Yes", humans) == pytest.approx(expected)


def test_textvqa_joins_llava_s_ocr_prompts_to_the_annotations(tmp_path):
    root = formats.write_textvqa(tmp_path)
    for data in (root, os.path.join(root, "llava_textvqa_val_v051_ocr.jsonl")):
        questions = textvqa.load(data, "/imgs")
        assert [q.id for q in questions] == ["34602", "34603", "34604"]  # TextVQA's ids: LLaVA's are image ids
        images = [os.path.join("/imgs", name) for name in ("img_a.jpg", "img_a.jpg", "img_c.jpg")]
        assert [q.image for q in questions] == images
        assert textvqa.build_prompt(questions[0]) == formats.TEXTVQA[0][1]["text"]  # verbatim, OCR tokens and all
        assert questions[1].answer == formats.TEXTVQA[1][0]["answers"]
    result = textvqa.score(questions, _responses(questions, ["Coca-Cola", "Two.", "the stop"]))
    assert result["score"] == pytest.approx(100 * (1.0 + 0.9 + 0.3) / 3)


@pytest.mark.parametrize("prompt, question", [
    ("What is it?\nReference OCR token: A, B\nAnswer the question using a single word or phrase.", "what is it?"),
    ("Reference OCR token: A, B\nWhat is it?\nAnswer the question using a single word or phrase.", "what is it?"),
    ("What is it?\nAnswer the question using a single word or phrase.", "what is it?"),
    ("OCR tokens: A B Question: What is it? Short answer:", "what is it?"),
    ("one\ntwo\nthree\nfour", None),
])
def test_textvqa_reads_the_question_back_as_llava_s_prompt_processor(prompt, question):
    assert textvqa.llava_question(prompt) == question


def test_textvqa_llava_record_without_annotation_is_named(tmp_path):
    records = [formats.TEXTVQA[0], (formats.TEXTVQA[2][0], {**formats.TEXTVQA[2][1], "question_id": "img_x"})]
    root = formats.write_textvqa(tmp_path, records)
    with pytest.raises(DataFormatError, match="ocr.jsonl: line 2: no annotation .* image 'img_x'"):
        textvqa.load(root, None)


def test_textvqa_annotations_alone_warn_that_they_are_not_the_protocol(fixtures_dir):
    with pytest.warns(UserWarning, match="lack its OCR tokens"):
        questions = textvqa.load(os.path.join(fixtures_dir, "textvqa", "TextVQA_0.5.1_val.json"), "/imgs")
    assert questions[2].image == os.path.join("/imgs", "img_c.jpg")
    assert textvqa.build_prompt(questions[2]) == ("what does the sign say?\nReference OCR token: STOP, ahead\n"
                                                  "Answer the question using a single word or phrase.")
    # "Coca-Cola" -> "coca cola": 4 humans -> 1.0; "Two." -> "2": 3 humans -> 0.9; "the stop": 1 human -> 0.3
    result = textvqa.score(questions, _responses(questions, ["Coca-Cola", "Two.", "the stop"]))
    assert result["score"] == pytest.approx(100 * (1.0 + 0.9 + 0.3) / 3)


def test_textvqa_rejects_a_question_without_ten_answers(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"data": [{"question": "q", "image_id": "i", "question_id": 7, "answers": ["a", "b"]}]}')
    with pytest.raises(DataFormatError, match="question 7 has 2 answers"):
        textvqa.load(str(path), None)


# ---- ScienceQA-IMG ----

def test_scienceqa_keeps_test_questions_with_an_image(fixtures_dir):
    questions = scienceqa.load(os.path.join(fixtures_dir, "scienceqa"), "/sqa/test")
    assert [q.id for q in questions] == ["1", "2", "5"]
    assert questions[0].image == os.path.join("/sqa/test", "1", "image.png")
    assert scienceqa.build_prompt(questions[0]) == (
        "Context: Look at the picture.\nWhich animal is shown?\nA. cat\nB. dog\n"
        "Answer with the option's letter from the given choices directly.")


def test_scienceqa_reads_llava_converted_file_with_problems_beside_it(fixtures_dir):
    questions = scienceqa.load(os.path.join(fixtures_dir, "scienceqa", "llava_test_CQM-A.json"), "/sqa/test")
    assert [q.id for q in questions] == ["1", "2"]  # record 3 has no image
    assert questions[1].image == os.path.join("/sqa/test", "2/image.png")
    assert questions[1].answer == 0
    assert scienceqa.build_prompt(questions[1]) == (
        "Which letter comes first?\nA. a\nB. b\nC. c\nAnswer with the option's letter from the given choices directly.")


@pytest.mark.parametrize("response, num_choices, letter", [
    ("B", 2, "B"), (" C ", 3, "C"), ("A. a", 3, "A"), ("The answer is D.", 4, "D"), ("B\nbecause", 2, "B"),
    ("E", 4, None), ("I think C", 4, None), ("The answer is C", 2, None), ("", 2, None), ("AB", 4, None),
])
def test_scienceqa_letter_extraction(response, num_choices, letter):
    assert scienceqa.extract_letter(response, num_choices) == letter


def test_scienceqa_option_accuracy(fixtures_dir):
    questions = scienceqa.load(os.path.join(fixtures_dir, "scienceqa", "problems.json"), None)
    result = scienceqa.score(questions, _responses(questions, ["B", "A. a", "I think C"]))
    assert result["correct"] == 2 and result["unparsed"] == 1
    assert result["score"] == pytest.approx(200 / 3)


# ---- POPE ----

POPE_RESPONSES = {
    "random/1": "Yes, there is a dog.", "random/2": "No.", "random/3": "No, there is not.", "random/4": "Yes",
    "popular/1": "yes", "popular/2": "yes", "popular/3": "There is not a cat.", "popular/4": "I see a cat. No doubt.",
    "adversarial/1": "No", "adversarial/2": "Nope",  # "Nope" is not the word "No": a yes
}


def test_pope_loads_every_split_with_split_qualified_ids(fixtures_dir):
    questions = pope.load(os.path.join(fixtures_dir, "pope"), "/coco")
    assert sorted(q.id for q in questions) == sorted(POPE_RESPONSES)
    assert {q.fields["split"] for q in questions} == {"random", "popular", "adversarial"}
    one = pope.load(os.path.join(fixtures_dir, "pope", "coco_pope_adversarial.json"), "/coco")
    assert [q.id for q in one] == ["adversarial/1", "adversarial/2"]
    assert one[0].image == os.path.join("/coco", "COCO_val2014_000000000001.jpg")


@pytest.mark.parametrize("response, parsed", [("Yes, there is.", "yes"), ("No.", "no"), ("It is not.", "no"),
                                              ("Yes. No idea why.", "yes"), ("NO", "yes"), ("no,", "no")])
def test_pope_yes_no_parsing(response, parsed):
    assert pope.parse_yes_no(response) == parsed


def test_pope_metrics_per_split(fixtures_dir):
    questions = pope.load(os.path.join(fixtures_dir, "pope"), None)
    result = pope.score(questions, POPE_RESPONSES)
    random, popular, adversarial = (result["splits"][s] for s in ("random", "popular", "adversarial"))
    # random: preds yes,no,no,yes vs labels yes,yes,no,no -> TP=FN=TN=FP=1
    assert (random["tp"], random["fp"], random["tn"], random["fn"]) == (1, 1, 1, 1)
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert random[key] == pytest.approx(50.0)
    # popular: preds yes,yes,no,yes vs labels yes,no,no,yes -> TP=2 FP=1 TN=1 FN=0
    assert popular["accuracy"] == pytest.approx(75.0)
    assert popular["precision"] == pytest.approx(200 / 3)
    assert popular["recall"] == pytest.approx(100.0)
    assert popular["f1"] == pytest.approx(80.0)
    assert popular["yes_ratio"] == pytest.approx(75.0)
    # adversarial: preds no,yes vs labels no,yes
    assert adversarial["f1"] == pytest.approx(100.0) and adversarial["yes_ratio"] == pytest.approx(50.0)
    assert result["score"] == pytest.approx((50 + 80 + 100) / 3)
    assert result["accuracy"] == pytest.approx((50 + 75 + 100) / 3)


def test_pope_precision_is_zero_without_yes_answers():
    metrics = pope.binary_metrics(["no", "no"], ["yes", "no"])
    assert metrics["precision"] == 0.0 and metrics["f1"] == 0.0 and metrics["accuracy"] == pytest.approx(50.0)


# ---- MME ----

MME_RESPONSES = {
    "existence/img1.jpg/0": "Yes", "existence/img1.jpg/1": "No",
    "existence/img2.jpg/0": "Yes", "existence/img2.jpg/1": "Yes, there is",
    "OCR/o1.png/0": "yes.", "OCR/o1.png/1": "not sure",  # MME reads "no" in the first four characters
    "code_reasoning/c1.png/0": "Maybe", "code_reasoning/c1.png/1": "no",
}


@pytest.mark.parametrize("response, parsed", [("Yes", "yes"), (" no ", "no"), ("Yes, it is.", "yes"),
                                              ("not sure", "no"), ("Maybe", "other"), ("I think yes", "other")])
def test_mme_answer_parsing(response, parsed):
    assert mme.parse_yes_no(response) == parsed


def test_mme_loads_eval_tool_templates_grouped_by_image(fixtures_dir, tmp_path, touch_images):
    touch_images(tmp_path, ["existence/img1.jpg", "existence/images/img2.jpg"])
    questions = mme.load(os.path.join(fixtures_dir, "mme"), str(tmp_path))
    assert [q.id for q in questions] == list(MME_RESPONSES)
    assert questions[0].group == "existence/img1.jpg" and questions[1].group == "existence/img1.jpg"
    assert questions[0].image == os.path.join(str(tmp_path), "existence", "img1.jpg")
    assert questions[2].image == os.path.join(str(tmp_path), "existence", "images", "img2.jpg")
    assert questions[0].answer == "yes" and questions[1].answer == "no"


def test_mme_loads_the_released_folder_layouts(tmp_path, touch_images):
    touch_images(tmp_path, ["count/images/a.jpg", "color/b.png"])
    (tmp_path / "count" / "questions_answers_YN").mkdir()
    (tmp_path / "count" / "questions_answers_YN" / "a.txt").write_text(
        "Are there two dogs?\tYes\nAre there three dogs?\tNo\n")
    (tmp_path / "color" / "b.txt").write_text("Is the car red?\tNo\nIs the car blue?\tYes\n")
    questions = mme.load(str(tmp_path), None)
    assert [(q.id, q.answer) for q in questions] == [("count/a.jpg/0", "yes"), ("count/a.jpg/1", "no"),
                                                     ("color/b.png/0", "no"), ("color/b.png/1", "yes")]
    assert questions[2].image == os.path.join(str(tmp_path), "color", "b.png")


def test_mme_acc_and_acc_plus_per_subtask(fixtures_dir):
    questions = mme.load(os.path.join(fixtures_dir, "mme"), None)
    result = mme.score(questions, MME_RESPONSES)
    existence, ocr, code = (result["subtasks"][t] for t in ("existence", "OCR", "code_reasoning"))
    assert existence["acc"] == pytest.approx(75.0) and existence["acc_plus"] == pytest.approx(50.0)
    assert existence["score"] == pytest.approx(125.0)
    assert ocr["score"] == pytest.approx(200.0)
    assert code["acc"] == pytest.approx(50.0) and code["acc_plus"] == pytest.approx(0.0)
    assert result["perception"] == pytest.approx(325.0) and result["cognition"] == pytest.approx(50.0)
    assert result["score"] == pytest.approx(325.0)


def test_mme_rejects_a_non_yes_no_answer(tmp_path):
    (tmp_path / "color.txt").write_text("x.png\tWhat colour?\tred\n")
    with pytest.raises(DataFormatError, match="color/x.png"):
        mme.load(str(tmp_path), None)
