"""XSum: one-sentence summaries of BBC articles, scored by ROUGE, as OpenCompass's `Xsum_gen` config does.

Everything here follows OpenCompass (open-compass/opencompass at 5c6dc908, 2024-01-30):
- data (`opencompass/datasets/xsum.py`, `XsumDataset`): JSON lines with the article under
  `dialogue` (OpenCompass's `data/Xsum/dev.jsonl`) or `document` (the Hugging Face `xsum` split
  exported to JSON) and the reference under `summary`; only the first 1,000 records are read, and a
  record whose article or summary is not text (a NaN from a pandas export) is skipped (counted,
  with a warning that names the file);
- prompt (`configs/datasets/Xsum/Xsum_gen_31397e.py`): "Document：{dialogue}\\nBased on the previous
  text, provide a brief single summary:" (a full-width colon), plain text: the model is treated as
  a base LM, no conversation template, no image (the language-only path);
- prediction (`utils/text_postprocessors.py`, `Xsum_postprocess`): the first line of the stripped
  response;
- metric (`openicl/icl_evaluator/icl_hf_evaluator.py`, `RougeEvaluator`, through its copy of the
  Hugging Face `rouge` metric in `hf_metrics/rouge.py`): the `rouge-score` package's RougeScorer
  for rouge1, rouge2, rougeL and rougeLsum without stemming, each aggregated by its
  BootstrapAggregator (the mid F-measure, after `random.seed(0)` and `numpy.random.seed(0)`),
  times 100. The score is rouge1, the first metric OpenCompass reports. The plain mean F-measures
  are reported beside the bootstrap ones.
"""
from __future__ import annotations

import random
import warnings

import numpy as np

from eve_ms.eval.question import Question, check_unique_ids, read_jsonl, require_keys

OPENCOMPASS_RECORDS = 1000
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
PROMPT = "Document：{dialogue}\nBased on the previous text, provide a brief single summary:"


def load(data_path: str, image_folder: str | None = None) -> list[Question]:
    questions, skipped = [], 0
    for number, record in enumerate(read_jsonl(data_path)[:OPENCOMPASS_RECORDS]):
        key = "dialogue" if "dialogue" in record else "document"
        require_keys(record, (key, "summary"), f"{data_path}: record {number} (article under 'dialogue' or 'document')")
        if not isinstance(record[key], str) or not isinstance(record["summary"], str):
            skipped += 1
            continue
        questions.append(Question(id=str(record.get("id", number)), answer=record["summary"],
                                  fields={"dialogue": record[key]}))
    if skipped:
        warnings.warn(f"{data_path}: skipped {skipped} record(s) whose article or summary is not text")
    return check_unique_ids(questions, data_path)


def build_prompt(question: Question) -> str:
    return PROMPT.replace("{dialogue}", question.fields["dialogue"])


def first_line(response: str) -> str:
    """OpenCompass's `Xsum_postprocess`."""
    return response.strip().split("\n")[0].strip()


def rouge(predictions: list[str], references: list[str]) -> dict:
    """OpenCompass's RougeEvaluator (bootstrap mid F-measure x 100) and the plain means, per rouge type."""
    from rouge_score import rouge_scorer, scoring  # imported when scoring: it takes seconds (nltk)

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    aggregator = scoring.BootstrapAggregator()
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for reference, prediction in zip(references, predictions):
        scores = scorer.score(reference, prediction)
        aggregator.add_scores(scores)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    state, np_state = random.getstate(), np.random.get_state()
    random.seed(0)
    np.random.seed(0)
    try:
        aggregated = aggregator.aggregate()
    finally:  # as OpenCompass does: the global generators come back as they were
        random.setstate(state)
        np.random.set_state(np_state)
    result = {name: 100.0 * aggregated[name].mid.fmeasure for name in ROUGE_TYPES}
    result.update({f"{name}_mean": 100.0 * totals[name] / len(references) for name in ROUGE_TYPES})
    return result


def score(questions: list[Question], responses: dict[str, str]) -> dict:
    metrics = rouge([first_line(responses[q.id]) for q in questions], [q.answer for q in questions])
    return {"score": metrics["rouge1"], **metrics, "total": len(questions)}
