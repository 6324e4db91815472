"""The AVG columns of the paper's tables: Table 5 (VLM benchmarks) and Table 11 (language).

VLM average: the plain mean of the six scores with MME perception brought to a percentage
first, MME_P / 2000 * 100 (2000 is its maximum: ten subtasks of at most 100 acc + 100 acc+).
Language average: the plain mean of the eight language scores.

Scores are keyed by the tables' column names or by the benchmark names of
`eve-ms eval`, or given as a sequence in the tables' column order.
"""
from __future__ import annotations

from typing import Mapping, Sequence

# table column -> benchmark name in eve_ms.eval.registry
VLM_COLUMNS = {"GQA": "gqa", "SQA_IMG": "scienceqa_img", "TextVQA": "textvqa", "POPE": "pope",
               "MME_P": "mme", "MMBench_dev": "mmbench"}
LANGUAGE_COLUMNS = {"ceval": "ceval", "cmmlu": "cmmlu", "mmlu": "mmlu", "BoolQ": "boolq", "Ax-b": "ax_b",
                    "PIQA": "piqa", "EPRSTMT": "eprstmt", "XSum": "xsum"}
MME_PERCEPTION_MAX = 2000.0


def _ordered(scores: Mapping[str, float] | Sequence[float], columns: dict[str, str], table: str) -> list[float]:
    if not isinstance(scores, Mapping):
        values = [float(v) for v in scores]
        if len(values) != len(columns):
            raise ValueError(f"{table}: expected {len(columns)} scores in the order {list(columns)}, got {len(values)}")
        return values
    values, missing = [], []
    for column, benchmark in columns.items():
        if column in scores:
            values.append(float(scores[column]))
        elif benchmark in scores:
            values.append(float(scores[benchmark]))
        else:
            missing.append(column)
    if missing:
        raise KeyError(f"{table}: missing score(s) for {missing}; got {sorted(scores)}")
    return values


def vlm_average(scores: Mapping[str, float] | Sequence[float]) -> float:
    """Table 5's AVG from GQA, SQA_IMG, TextVQA, POPE, MME_P (raw, max 2000) and MMBench_dev."""
    values = _ordered(scores, VLM_COLUMNS, "VLM average")
    mme_index = list(VLM_COLUMNS).index("MME_P")
    values[mme_index] = values[mme_index] / MME_PERCEPTION_MAX * 100.0
    return sum(values) / len(values)


def language_average(scores: Mapping[str, float] | Sequence[float]) -> float:
    """Table 11's AVG from ceval, cmmlu, mmlu, BoolQ, Ax-b, PIQA, EPRSTMT and XSum."""
    values = _ordered(scores, LANGUAGE_COLUMNS, "language average")
    return sum(values) / len(values)
