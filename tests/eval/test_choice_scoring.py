"""Choice benchmarks: lowest mean loss of the whole text (ppl), the loglik option, subject means, shot fitting."""
import json

import pytest
import released_formats as formats

from eve_ms.eval import choice, language
from eve_ms.eval.runner import evaluate


def test_ppl_picks_the_lowest_loss_and_loglik_the_highest_ties_to_the_first():
    assert choice.pick([2.0, 1.5, 1.5, 3.0], "ppl") == 1
    assert choice.pick([-2.0, -1.5, -1.5, -3.0], "loglik") == 1
    with pytest.raises(ValueError, match="unknown choice scoring 'mean'"):
        choice.pick([1.0], "mean")


def test_ppl_compares_answers_of_different_lengths_by_their_mean_loss(tmp_path, fake_choice):
    """PIQA's first question: the long right solution has the larger summed loss but the lower mean."""
    data = formats.write_piqa(tmp_path)
    # per candidate text: (mean loss, summed continuation log-likelihood)
    short, long = "Use a spoon.\n", "Pour the water slowly into the glass.\n"
    predictor = fake_choice([("fill a glass", {short: 2.0, long: 1.2}), ("open a jar", {"lid.\n": 1.0})])
    predictor.rules[1] = ("open a jar", {"Twist the lid.\n": 1.0, "Paint the lid.\n": 1.4})
    ppl = evaluate("piqa", data, None, predictor, str(tmp_path / "ppl.jsonl"), progress=False)
    assert ppl["score"] == pytest.approx(100.0)
    assert predictor.calls[0][0] == "ppl" and len(predictor.calls[0][1]) == 4

    sums = fake_choice([("fill a glass", {short: -6.5, long: -7.6}),
                        ("open a jar", {"Twist the lid.\n": -0.3, "Paint the lid.\n": -2.1})])
    loglik = evaluate("piqa", data, None, sums, str(tmp_path / "loglik.jsonl"), scoring="loglik", progress=False)
    assert loglik["score"] == pytest.approx(50.0)  # the sum prefers the short wrong solution
    _, contexts, continuations = sums.calls[0]
    assert contexts[0] == "The following makes sense: \nQ: To fill a glass with water\nA: "
    assert continuations[:2] == [short, long]


def test_subject_score_is_the_mean_over_subjects_and_missing_subjects_are_named(tmp_path, fake_choice):
    data = formats.write_mmlu(tmp_path)
    # astronomy/0 right (B), astronomy/1 wrong (A instead of C), virology/0 right (C)
    predictor = fake_choice([("red planet?", dict(zip("ABCD", [3.0, 1.0, 2.0, 4.0]))),
                             ("closest star", dict(zip("ABCD", [1.0, 2.0, 1.5, 3.0]))),
                             ("is a virus", dict(zip("ABCD", [5.0, 5.0, 0.5, 5.0])))])
    result = evaluate("mmlu", data, None, predictor, str(tmp_path / "a.jsonl"), progress=False)
    metrics = result["metrics"]
    assert metrics["accuracy_by_subject"] == pytest.approx({"astronomy": 50.0, "virology": 100.0})
    assert result["score"] == pytest.approx(75.0) and metrics["accuracy"] == pytest.approx(200 / 3)
    assert len(metrics["subjects_missing"]) == 55 and "anatomy" in metrics["subjects_missing"]
    assert all(text.count("Answer: ") == 6 for text in predictor.calls[0][1])  # five examples and the question


def test_two_way_benchmarks_report_matthews_correlation(tmp_path, fake_choice):
    predictor = fake_choice([("sun a star", {"No": 2.0, "Yes": 1.0}), ("whale a fish", {"No": 1.0, "Yes": 3.0}),
                             ("penguins fly", {"No": 0.7, "Yes": 0.5})])
    metrics = evaluate("boolq", formats.write_boolq(tmp_path), None, predictor, str(tmp_path / "a.jsonl"),
                       progress=False)["metrics"]
    # predictions 1, 0, 1 against labels 1, 0, 0: TP=1 TN=1 FP=1 FN=0 -> (1 - 0) / sqrt(2 * 1 * 1 * 2) = 0.5
    assert metrics["accuracy"] == pytest.approx(200 / 3)
    assert metrics["matthews_correlation"] == pytest.approx(0.5)


def _ceval_lengths(tmp_path):
    """Token (character) counts of the first C-Eval question's label-A text for 0..5 examples."""
    from eve_ms.eval import opencompass

    q = language.load_ceval(formats.write_ceval(tmp_path))[0]
    return [len("".join(opencompass.ceval(q, k)[0])) for k in range(6)]


def test_examples_are_dropped_from_the_end_until_the_text_fits_the_context(tmp_path, fake_choice):
    lengths = _ceval_lengths(tmp_path / "probe")
    data = formats.write_ceval(tmp_path / "data")
    rules = [("TCP", dict(zip("ABCD", [1.0, 2.0, 3.0, 4.0]))), ("IP协议", dict(zip("ABCD", [4.0, 3.0, 2.0, 1.0])))]
    fits_three = fake_choice(rules, max_length=lengths[3])
    answers = tmp_path / "a.jsonl"
    result = evaluate("ceval", data, None, fits_three, str(answers), progress=False)
    records = [json.loads(line) for line in answers.read_text().splitlines()[1:]]
    assert records[0]["shots"] == [3, 3, 3, 3]
    assert all(len(text) <= lengths[3] for text in fits_three.calls[0][1])
    assert result["metrics"]["shots_reduced"] == 2 and result["metrics"]["truncated"] == 0
    assert result["score"] == pytest.approx(100.0)

    too_short = fake_choice(rules, max_length=lengths[0] - 2)  # the second question is one character shorter
    result = evaluate("ceval", data, None, too_short, str(tmp_path / "b.jsonl"), progress=False)
    assert result["metrics"]["truncated"] == 2  # scored all the same (the predictor keeps the text's end)


def test_shots_option_and_zero_shots(tmp_path, fake_choice):
    rules = [("TCP", dict(zip("ABCD", [1.0, 2.0, 3.0, 4.0]))), ("IP协议", dict(zip("ABCD", [4.0, 3.0, 2.0, 1.0])))]
    predictor = fake_choice(rules)
    result = evaluate("ceval", formats.write_ceval(tmp_path), None, predictor, str(tmp_path / "a.jsonl"), shots=0,
                      progress=False)
    assert all(text.startswith("\n\n以下是中国关于") for text in predictor.calls[0][1])
    assert result["score"] == pytest.approx(100.0) and "shots_reduced" not in result["metrics"]


def test_a_later_label_starts_from_the_examples_the_earlier_labels_kept():
    """OpenCompass's PPLInferencer drops examples per label, in label order, from one shared count."""
    from types import SimpleNamespace

    from eve_ms.eval.ask import fit_shots
    from eve_ms.eval.question import Question

    # label i's text is 10 * shots + extra[i] characters long
    extra = [0, 25, 5]
    bench = SimpleNamespace(candidates=lambda q, k: [("x" * (10 * k), "y" * e) for e in extra])
    predictor = SimpleNamespace(max_length=42, num_tokens=len)
    candidates, kept = fit_shots(bench, Question(id="q", answer=0), 5, predictor)
    assert kept == [4, 1, 1]  # label 0 fits with 4 (40), label 1 needs 1 (35), label 2 keeps 1 (15)
    assert [len(c + x) for c, x in candidates] == [40, 35, 15]
