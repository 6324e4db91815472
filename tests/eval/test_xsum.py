"""XSum as OpenCompass's Xsum_gen config runs it: data keys, prompt, first line, ROUGE from `rouge-score`."""
import json
import random

import numpy as np
import pytest
import released_formats as formats
from rouge_score import rouge_scorer, scoring

from eve_ms.eval import xsum
from eve_ms.eval.runner import evaluate

PREDICTIONS = ["\nThe old bridge will close because of cracks.\nIt was built in 1901.",
               "Storms cut power on the northern coast"]
FIRST_LINES = ["The old bridge will close because of cracks.", "Storms cut power on the northern coast"]


def _rouge_score_reference(predictions, references):
    """The `rouge-score` package as OpenCompass's RougeEvaluator drives it (its copy of HF's rouge metric)."""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
    aggregator = scoring.BootstrapAggregator()
    singles = []
    for reference, prediction in zip(references, predictions):
        singles.append(scorer.score(reference, prediction))
        aggregator.add_scores(singles[-1])
    random.seed(0)
    np.random.seed(0)
    aggregated = aggregator.aggregate()
    return ({k: 100 * v.mid.fmeasure for k, v in aggregated.items()},
            {k: 100 * np.mean([s[k].fmeasure for s in singles]) for k in aggregated})


def test_scores_equal_rouge_score_on_the_fixture(tmp_path):
    questions = xsum.load(formats.write_xsum(tmp_path))
    result = xsum.score(questions, {q.id: p for q, p in zip(questions, PREDICTIONS)})
    bootstrap, means = _rouge_score_reference(FIRST_LINES, [r["summary"] for r in formats.XSUM])
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert result[name] == pytest.approx(bootstrap[name], abs=1e-12)
        assert result[f"{name}_mean"] == pytest.approx(means[name], abs=1e-12)
    assert result["score"] == result["rouge1"] and 0 < result["rouge1"] < 100


def test_scores_equal_rouge_score_on_random_texts():
    rng = np.random.default_rng(0)
    words = ["the", "storm", "bridge", "council", "power", "coast", "closed", "cut", "a", "of", "on", "U.S.", "2-0"]
    predictions = [" ".join(rng.choice(words, rng.integers(0, 12))) for _ in range(40)]
    references = [" ".join(rng.choice(words, rng.integers(1, 12))) for _ in range(40)]
    ours = xsum.rouge(predictions, references)
    bootstrap, means = _rouge_score_reference(predictions, references)
    assert {k: ours[k] for k in bootstrap} == pytest.approx(bootstrap, abs=1e-12)
    assert {k: ours[f"{k}_mean"] for k in means} == pytest.approx(means, abs=1e-12)


def test_scoring_leaves_the_global_random_generators_as_they_were():
    np.random.seed(123)
    random.seed(123)
    xsum.rouge(["a b c"], ["a b d"])
    assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(1 << 30)
    assert random.random() == random.Random(123).random()


def test_prompt_and_first_line_are_opencompass_s():
    assert xsum.PROMPT == "Document：{dialogue}\nBased on the previous text, provide a brief single summary:"
    assert xsum.first_line("  \n\nA summary.  \nMore.") == "A summary."


def test_articles_under_dialogue_or_document(tmp_path):
    for key in ("dialogue", "document"):
        questions = xsum.load(formats.write_xsum(tmp_path / key, article_key=key))
        assert [q.id for q in questions] == ["x1", "x2"] and questions[0].image is None
        assert xsum.build_prompt(questions[1]) == (
            "Document：Heavy storms hit the northern coast on Monday, cutting power to thousands.\n"
            "Based on the previous text, provide a brief single summary:")


def test_only_the_first_thousand_records_are_read_and_non_text_records_are_counted(tmp_path):
    records = [{"dialogue": f"article {i}", "summary": f"summary {i}", "id": str(i)} for i in range(1003)]
    records[5]["summary"] = float("nan")
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.warns(UserWarning, match=r"dev.jsonl: skipped 1 record"):
        questions = xsum.load(str(path))
    assert len(questions) == 999 and questions[-1].id == "999"


class _PlainGenerator:
    """Answers every item with a fixed summary; counts prompt tokens as words (bos + words)."""
    max_length = 100 + 30  # room for 30 prompt tokens beside XSum's 100 new ones

    def __init__(self):
        self.items = []

    def predict(self, items):
        self.items += items
        return ["Storms hit the coast."] * len(items)

    def prompt_length(self, item):
        return 1 + len(item["prompt"].split())


def test_xsum_asks_plain_text_with_truncation_and_counts_the_truncated(tmp_path):
    records = [formats.XSUM[1], {"dialogue": " ".join(["word"] * 60), "summary": "Words.", "id": "x3"}]
    predictor = _PlainGenerator()
    answers = tmp_path / "xsum_answers.jsonl"
    result = evaluate("xsum", formats.write_xsum(tmp_path, records), None, predictor, str(answers), progress=False)
    assert all(item["chat"] is False and item["truncate"] is True for item in predictor.items)
    assert all(item["max_new_tokens"] == 100 and item["image"] is None for item in predictor.items)
    assert result["metrics"]["truncated"] == 1
    lines = [json.loads(line) for line in answers.read_text().splitlines()[1:]]
    long_prompt_tokens = 1 + 60 + 10  # bos, "Document：word", 59 more words, the 10 words of the instruction
    assert [line["prompt_tokens"] for line in lines][1] == long_prompt_tokens
    assert [line["truncated_tokens"] for line in lines] == [0, long_prompt_tokens - 30]
