"""Language benchmarks: log-likelihood multiple choice and ROUGE, against hand-computed values."""
import os

import pytest

from eve_ms.eval import language, rouge, xsum


def _scores(questions, logliks_in_order):
    return {q.id: v for q, v in zip(questions, logliks_in_order)}


def test_mmlu_subject_mean_and_pooled_accuracy(fixtures_dir):
    questions = language.load_mmlu(os.path.join(fixtures_dir, "mmlu"))
    assert [q.id for q in questions] == ["astronomy/0", "astronomy/1", "virology/0"]
    assert questions[1].fields["question"] == "What is the closest star to Earth, apart from none?"
    assert questions[0].choices == (" A", " B", " C", " D")
    assert language.prompt_mmlu(questions[0]) == (
        "The following are multiple choice questions (with answers) about astronomy.\n\n"
        "Which planet is known as the red planet?\nA. Venus\nB. Mars\nC. Earth\nD. Jupiter\nAnswer:")
    # picks: B (right), C (wrong: A), C (right)
    result = language.score(questions, _scores(questions, [[-3, -1, -2, -4], [-2, -3, -1, -4], [-5, -5, -0.5, -5]]))
    assert result["accuracy"] == pytest.approx(200 / 3)
    assert result["accuracy_by_subject"] == pytest.approx({"astronomy": 50.0, "virology": 100.0})
    assert result["score"] == pytest.approx(75.0)


def test_ceval_uses_the_chinese_subject_name_and_letter_continuations(fixtures_dir):
    questions = language.load_ceval(os.path.join(fixtures_dir, "ceval"))
    assert [q.answer for q in questions] == [0, 3] and questions[0].choices == ("A", "B", "C", "D")
    assert language.prompt_ceval(questions[0]).startswith("以下是中国关于计算机网络考试的单项选择题")
    assert language.prompt_ceval(questions[0]).endswith("A. 传输层\nB. 网络层\nC. 应用层\nD. 物理层\n答案：")
    result = language.score(questions, _scores(questions, [[0, -1, -1, -1], [0, -1, -1, -1]]))
    assert result["score"] == pytest.approx(50.0)


def test_cmmlu_reads_the_headed_csv(fixtures_dir):
    questions = language.load_cmmlu(os.path.join(fixtures_dir, "cmmlu"))
    assert [q.id for q in questions] == ["agronomy/0", "agronomy/1"]
    assert language.prompt_cmmlu(questions[1]).startswith(
        "以下是关于agronomy的单项选择题，请直接给出正确答案的选项。\n\n题目：下列哪种肥料是氮肥？")
    assert language.score(questions, _scores(questions, [[0, -1, -2, -3]] * 2))["score"] == pytest.approx(100.0)


def test_boolq_accuracy_and_matthews_correlation(fixtures_dir):
    questions = language.load_boolq(os.path.join(fixtures_dir, "boolq.jsonl"))
    assert [q.answer for q in questions] == [1, 0, 1] and questions[0].choices == (" no", " yes")
    result = language.score(questions, _scores(questions, [[-2, -1], [-1, -3], [-0.5, -0.7]]))
    assert result["accuracy"] == pytest.approx(200 / 3)
    # preds 1,0,0 vs labels 1,0,1: TP=1 TN=1 FP=0 FN=1 -> (1*1 - 0) / sqrt(1*2*1*2) = 0.5
    assert result["matthews_correlation"] == pytest.approx(0.5)


def test_piqa_labels_from_the_released_labels_file_and_length_normalisation(fixtures_dir):
    questions = language.load_piqa(os.path.join(fixtures_dir, "piqa", "valid.jsonl"))
    assert [q.answer for q in questions] == [1, 0]
    assert questions[0].choices == (" Use a spoon.", " Pour the water slowly into the glass.")
    # q0: raw picks sol1 (-6.5 > -7.6), per character -6.5/13 = -0.5 < -7.6/38 = -0.2 picks sol2 (right)
    # q1: raw picks sol1 (right), per character -0.3/3 = -0.1 > -2.1/7 = -0.3 also sol1
    result = language.score(questions, _scores(questions, [[-6.5, -7.6], [-0.3, -2.1]]))
    assert result["accuracy"] == pytest.approx(50.0)
    assert result["accuracy_length_normalised"] == pytest.approx(100.0)


def test_eprstmt_and_axb(fixtures_dir):
    epr = language.load_eprstmt(os.path.join(fixtures_dir, "eprstmt.json"))
    assert [q.answer for q in epr] == [1, 0] and epr[0].choices == ("消极", "积极")
    assert language.prompt_eprstmt(epr[0]) == '内容："质量很好，非常满意"\n情感：'
    assert language.score(epr, _scores(epr, [[-3, -1], [-1, -2]]))["score"] == pytest.approx(100.0)
    axb = language.load_axb(os.path.join(fixtures_dir, "AX-b.jsonl"))
    assert [q.answer for q in axb] == [0, 1]
    result = language.score(axb, _scores(axb, [[-1, -2], [-1, -2]]))
    assert result["score"] == pytest.approx(50.0)
    assert result["matthews_correlation"] == 0.0  # one predicted class only: zero by convention


def test_ties_go_to_the_first_choice(fixtures_dir):
    questions = language.load_axb(os.path.join(fixtures_dir, "AX-b.jsonl"))
    assert language.score(questions, _scores(questions, [[-1, -1], [-1, -1]]))["accuracy"] == pytest.approx(50.0)


def test_rouge_tokenisation():
    assert rouge.tokenize("U.S. 2-0 win!") == ["u", "s", "2", "0", "win"]


def test_rouge_on_hand_computed_pairs():
    # ref: the cat sat on the mat / pred: the cat was on the mat -> unigrams 5/6 both ways, bigrams 3/5,
    # longest common subsequence "the cat on the mat" = 5
    first = rouge.rouge_scores("the cat was on the mat", "The cat sat on the mat.")
    assert first == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})
    # ref 4 tokens, pred 7, 4 shared unigrams: P=4/7 R=1 -> F=8/11; bigrams: 2 shared, P=2/6 R=2/3 -> F=4/9
    second = rouge.rouge_scores("Heavy storms hit the northern coast today", "Storms hit the coast.")
    assert second == pytest.approx({"rouge1": 8 / 11, "rouge2": 4 / 9, "rougeL": 8 / 11})
    assert rouge.rouge_scores("", "anything") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_xsum_scores_the_first_line_of_each_summary(fixtures_dir):
    questions = xsum.load(os.path.join(fixtures_dir, "xsum.jsonl"))
    assert [q.id for q in questions] == ["x1", "x2"] and questions[0].image is None
    responses = {"x1": "\nthe cat was on the mat\nIt was a sunny day.",
                 "x2": "Heavy storms hit the northern coast today"}
    result = xsum.score(questions, responses)
    assert result["rouge1"] == pytest.approx(100 * (5 / 6 + 8 / 11) / 2)
    assert result["rouge2"] == pytest.approx(100 * (3 / 5 + 4 / 9) / 2)
    assert result["rougeL"] == pytest.approx(100 * (5 / 6 + 8 / 11) / 2)
    assert result["score"] == result["rouge1"]
