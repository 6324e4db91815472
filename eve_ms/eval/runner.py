"""Resumable evaluation of one benchmark: ask only the unanswered questions, append, score.

Every answer is appended to a JSONL file and flushed as soon as its batch returns, so an
interrupted run loses at most the batch in flight; a rerun on the same file asks the model
only the questions whose id is not there yet, and the scores come from the file. A last
line cut off mid-write is dropped (with a warning); any other bad line is an error.

The file's first line records what produced it (`eve_ms.eval.provenance`): resuming with another
checkpoint or other settings stops with an error that names both, `overwrite=True` starts the
file over, and a lock file keeps a second process from writing to it at the same time. What the
model is asked and how its replies become records is `eve_ms.eval.ask`.
"""
from __future__ import annotations

import json
import os
import warnings

from tqdm import tqdm

from eve_ms.eval.ask import ask_choice, ask_generate
from eve_ms.eval.choice import SCORINGS
from eve_ms.eval.provenance import HEADER_KEY, AnswersLock, check_same, header_line, read_header
from eve_ms.eval.question import Question
from eve_ms.eval.registry import Benchmark, get_benchmark

ANSWERS_FORMAT = 1


def select_questions(questions: list[Question], limit: int | None) -> list[Question]:
    """The questions of the first `limit` units (see `Question.group`), all of each unit."""
    if limit is None:
        return questions
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    kept: dict[str, None] = {}
    for q in questions:
        if q.unit not in kept:
            if len(kept) == limit:
                continue
            kept[q.unit] = None
    return [q for q in questions if q.unit in kept]


def _answer_key(mode: str) -> str:
    return "scores" if mode == "choice" else "prediction"


def read_answers(path: str, mode: str) -> dict[str, dict]:
    """id -> answer record from an answers JSONL (its header line skipped); repairs a cut-off last line."""
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    ends_complete = data.endswith(b"\n") or not data
    key = _answer_key(mode)
    answers: dict[str, dict] = {}
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            if number == len(lines) and not ends_complete:
                warnings.warn(f"{path}: dropping the last line, cut off mid-write ({len(raw)} bytes)")
                with open(path, "r+b") as f:
                    f.truncate(len(data) - len(raw))
                ends_complete = True
                break
            raise ValueError(f"{path}:{number}: not valid JSON") from None
        if number == 1 and isinstance(record, dict) and HEADER_KEY in record:
            continue
        if not isinstance(record, dict) or "id" not in record or key not in record:
            raise ValueError(f"{path}:{number}: expected an object with 'id' and '{key}' "
                             f"(answers of a {mode} benchmark)")
        answers.setdefault(str(record["id"]), record)
    if not ends_complete:  # a complete record without its newline: close the line before appending
        with open(path, "ab") as f:
            f.write(b"\n")
    return answers


def provenance(bench: Benchmark, model: dict | None, max_new_tokens: int, shots: int, scoring: str) -> dict:
    """What the answers of this run depend on, as the answers file's header records it."""
    if bench.mode == "choice":
        settings = {"prompt": {"template": "opencompass_ppl", "shots": shots, "scoring": scoring}}
    else:
        settings = {"prompt": {"chat": bench.chat}, "generation": {
            "max_new_tokens": max_new_tokens, "decoding": "greedy", "truncate": bench.truncate}}
    model = dict(model or {})
    if not bench.chat:
        model.pop("template", None)  # plain-text prompts: the conversation template plays no part
    return {"format": ANSWERS_FORMAT, "benchmark": bench.name, "model": model, **settings}


def _open_answers(path: str, header: dict, overwrite: bool) -> None:
    """Check (or start) the answers file's header; called with the file's lock held."""
    if overwrite and os.path.exists(path):
        os.remove(path)
    recorded = read_header(path)
    if recorded is None:  # no file yet, or an empty one
        with open(path, "w", encoding="utf-8") as f:
            f.write(header_line(header))
        return
    check_same(path, recorded, json.loads(json.dumps(header)))  # compare as the file stores it


def _summary(bench: Benchmark, questions: list[Question], records: dict[str, dict], shots: int) -> dict:
    """Counts of the answers that did not get the protocol's whole prompt."""
    chosen = [records[q.id] for q in questions]
    summary = {}
    if bench.mode == "choice":
        if shots:
            summary["shots_reduced"] = sum(min(r["shots"]) < shots for r in chosen)
        summary["truncated"] = sum(bool(r.get("truncated")) for r in chosen)
    elif bench.truncate:
        summary["truncated"] = sum(r.get("truncated_tokens", 0) > 0 for r in chosen)
    return summary


def evaluate(benchmark: str, data_path: str, image_folder: str | None, predictor, answers_jsonl: str, *,
             model: dict | None = None, max_new_tokens: int | None = None, shots: int | None = None,
             scoring: str = "ppl", overwrite: bool = False, limit: int | None = None, batch_size: int = 8,
             results_json: str | None = None, progress: bool = True) -> dict:
    """Answer every question of `benchmark` not yet in `answers_jsonl`, then score them all.

    `model` describes the model behind `predictor` for the answers file's header (checkpoint,
    weights fingerprint, template, compute dtype); `max_new_tokens` and `shots` default to the
    benchmark's protocol; `scoring` is the choice benchmarks' "ppl" (protocol) or "loglik".
    Returns (and writes to `results_json` when given) a dict with the benchmark's "score" and its
    full "metrics".
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if scoring not in SCORINGS:
        raise ValueError(f"unknown choice scoring {scoring!r}; expected one of {SCORINGS}")
    bench = get_benchmark(benchmark)
    max_new_tokens = bench.max_new_tokens if max_new_tokens is None else max_new_tokens
    shots = bench.shots if shots is None else shots
    if bench.mode == "generate" and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if shots < 0:
        raise ValueError(f"shots must be zero or more, got {shots}")
    method = scoring if bench.mode == "choice" else "predict"
    if not callable(getattr(predictor, method, None)):
        raise TypeError(f"{benchmark} needs a predictor with a {method}() method; got {type(predictor).__name__}")
    questions = select_questions(bench.load(data_path, image_folder), limit)
    if not questions:
        raise ValueError(f"{benchmark}: no questions in {data_path}")

    os.makedirs(os.path.dirname(os.path.abspath(answers_jsonl)), exist_ok=True)
    key = _answer_key(bench.mode)
    with AnswersLock(answers_jsonl):
        _open_answers(answers_jsonl, provenance(bench, model, max_new_tokens, shots, scoring), overwrite)
        records = read_answers(answers_jsonl, bench.mode)
        remaining = [q for q in questions if q.id not in records]
        with open(answers_jsonl, "a", encoding="utf-8") as log, \
                tqdm(total=len(questions), initial=len(questions) - len(remaining), desc=benchmark, unit="q",
                     disable=not progress) as bar:
            for start in range(0, len(remaining), batch_size):
                batch = remaining[start:start + batch_size]
                if bench.mode == "choice":
                    new = ask_choice(bench, batch, predictor, shots, scoring)
                else:
                    new = ask_generate(bench, batch, predictor, max_new_tokens)
                for record in new:
                    log.write(json.dumps(record, ensure_ascii=False) + "\n")
                    records[record["id"]] = record
                log.flush()
                bar.update(len(batch))

    responses = {q.id: records[q.id][key] for q in questions}
    if bench.mode == "choice":
        metrics = bench.score(questions, responses, scoring)
    else:
        metrics = bench.score(questions, responses)
    metrics.update(_summary(bench, questions, records, shots))
    result = {"benchmark": benchmark, "data": data_path, "answers": answers_jsonl,
              "questions": len(questions), "score": metrics["score"], "metrics": metrics}
    if results_json:
        os.makedirs(os.path.dirname(os.path.abspath(results_json)), exist_ok=True)
        with open(results_json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, ensure_ascii=False)
    return result
