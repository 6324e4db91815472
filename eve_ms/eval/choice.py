"""Scoring of the multiple-choice language benchmarks from one number per candidate text.

Two scorings (`--choice-scoring`):
- "ppl" (the protocol): each number is the mean token loss of the whole filled template, and the
  answer is the candidate with the lowest (OpenCompass's PPLInferencer: `labels[ppl.index(min(ppl))]`,
  so a tie goes to the first label). Dividing by the length compares answers of different lengths
  (PIQA's solutions) fairly.
- "loglik": each number is the summed log-likelihood of the candidate's answer part given its
  context, and the answer is the highest (ties: the first).

Scores, in percent: accuracy; for the subject benchmarks (MMLU, C-Eval, CMMLU) the benchmark's
score is the unweighted mean of the per-subject accuracies (OpenCompass's summary groups
average their subsets naively), with the pooled accuracy beside it and the subjects of the
benchmark's list that were not read. Two-way benchmarks also report Matthews' correlation.
"""
from __future__ import annotations

import math
from collections import defaultdict

from eve_ms.eval.question import Question

SCORINGS = ("ppl", "loglik")


def pick(values: list[float], scoring: str) -> int:
    """Index of the chosen candidate: lowest loss ("ppl") or highest log-likelihood ("loglik"); ties: the first."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown choice scoring {scoring!r}; expected one of {SCORINGS}")
    best = min(values) if scoring == "ppl" else max(values)
    return values.index(best)


def matthews_correlation(predictions: list[int], labels: list[int]) -> float:
    tp = sum(p == 1 and l == 1 for p, l in zip(predictions, labels))
    tn = sum(p == 0 and l == 0 for p, l in zip(predictions, labels))
    fp = sum(p == 1 and l == 0 for p, l in zip(predictions, labels))
    fn = sum(p == 0 and l == 1 for p, l in zip(predictions, labels))
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def score(questions: list[Question], responses: dict[str, list[float]], scoring: str,
          subjects: tuple[str, ...] | None = None) -> dict:
    """`responses[id]` holds one number per candidate of the question, in the candidates' order."""
    predictions = []
    for q in questions:
        values = [float(v) for v in responses[q.id]]
        predictions.append(pick(values, scoring))
    labels = [q.answer for q in questions]
    accuracy = 100.0 * sum(p == l for p, l in zip(predictions, labels)) / len(questions)
    result = {"score": accuracy, "accuracy": accuracy, "total": len(questions), "scoring": scoring}
    if {len(responses[q.id]) for q in questions} == {2}:
        result["matthews_correlation"] = matthews_correlation(predictions, labels)
    by_subject: dict[str, list[bool]] = defaultdict(list)
    for q, p in zip(questions, predictions):
        if "subject" in q.fields:
            by_subject[q.fields["subject"]].append(p == q.answer)
    if by_subject:
        per_subject = {s: 100.0 * sum(v) / len(v) for s, v in sorted(by_subject.items())}
        result["accuracy_by_subject"] = per_subject
        result["subject_mean_accuracy"] = sum(per_subject.values()) / len(per_subject)
        result["score"] = result["subject_mean_accuracy"]
        if subjects is not None:
            result["subjects_missing"] = [s for s in subjects if s not in per_subject]
    return result
