"""ROUGE-1, ROUGE-2 and ROUGE-L F-measures, as the `rouge-score` package computes them by default.

Text is lower-cased and every run of characters other than a-z and 0-9 becomes a word
break (no stemming, no stop words). ROUGE-N counts clipped n-gram overlaps; ROUGE-L uses
the longest common subsequence of the two token lists (sentence-level, not "Lsum").
Each is the harmonic mean of precision and recall, 0 when either is 0.
"""
from __future__ import annotations

import re
from collections import Counter

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return _NON_ALNUM.sub(" ", text.lower()).split()


def _f_measure(overlap: int, predicted: int, reference: int) -> float:
    if not overlap:
        return 0.0
    precision, recall = overlap / predicted, overlap / reference
    return 2 * precision * recall / (precision + recall)


def rouge_n(prediction: list[str], reference: list[str], n: int) -> float:
    pred = Counter(tuple(prediction[i:i + n]) for i in range(len(prediction) - n + 1))
    ref = Counter(tuple(reference[i:i + n]) for i in range(len(reference) - n + 1))
    overlap = sum((pred & ref).values())
    return _f_measure(overlap, sum(pred.values()), sum(ref.values()))


def lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: list[str], reference: list[str]) -> float:
    return _f_measure(lcs_length(prediction, reference), len(prediction), len(reference))


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """F-measures in [0, 1] for one prediction against one reference."""
    pred, ref = tokenize(prediction), tokenize(reference)
    return {"rouge1": rouge_n(pred, ref, 1), "rouge2": rouge_n(pred, ref, 2), "rougeL": rouge_l(pred, ref)}
