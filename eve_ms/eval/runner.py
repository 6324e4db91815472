"""Resumable evaluation of one benchmark: ask only the unanswered questions, append, score.

Every answer is appended to a JSONL file and flushed as soon as its batch returns, so an
interrupted run loses at most the batch in flight; a rerun on the same file asks the model
only the questions whose id is not there yet, and the scores come from the file. A last
line cut off mid-write is dropped (with a warning); any other bad line is an error.

The predictor is any object with
  predict(items) -> list[str]: one generated answer per item; an item is a dict with
      "id", "prompt" (the user turn, without chat template or image placeholder), "image"
      (None, an image file path, or a PIL image) and "max_new_tokens" (a hint);
  loglik(contexts, continuations) -> list[float]: log p(continuation | context) summed
      over the continuation's tokens, for language multiple choice; plain text, no chat
      template, no image (the language-only path).
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import warnings
from typing import Any

from tqdm import tqdm

from eve_ms.eval.question import Question
from eve_ms.eval.registry import Benchmark, get_benchmark


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
    return "logliks" if mode == "loglik" else "prediction"


def read_answers(path: str, mode: str) -> dict[str, Any]:
    """id -> recorded response from an answers JSONL; repairs a cut-off last line."""
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    ends_complete = data.endswith(b"\n") or not data
    key = _answer_key(mode)
    answers: dict[str, Any] = {}
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
        if not isinstance(record, dict) or "id" not in record or key not in record:
            raise ValueError(f"{path}:{number}: expected an object with 'id' and '{key}' "
                             f"(answers of a {mode} benchmark)")
        answers.setdefault(str(record["id"]), record[key])
    if not ends_complete:  # a complete record without its newline: close the line before appending
        with open(path, "ab") as f:
            f.write(b"\n")
    return answers


def _image_for(question: Question, benchmark: str):
    if question.image_b64 is not None:
        from PIL import Image

        try:
            return Image.open(io.BytesIO(base64.b64decode(question.image_b64))).convert("RGB")
        except Exception as err:
            raise ValueError(f"{benchmark}: question {question.id}: cannot decode its base64 image ({err})") from None
    if question.image is not None and not os.path.exists(question.image):
        raise FileNotFoundError(f"{benchmark}: image of question {question.id} not found: {question.image}")
    return question.image


def _ask(bench: Benchmark, batch: list[Question], predictor) -> list[dict]:
    prompts = [bench.build_prompt(q) for q in batch]
    if bench.mode == "loglik":
        contexts = [p for p, q in zip(prompts, batch) for _ in q.choices]
        continuations = [c for q in batch for c in q.choices]
        values = list(predictor.loglik(contexts, continuations))
        if len(values) != len(contexts):
            raise ValueError(f"predictor.loglik returned {len(values)} values for {len(contexts)} continuations")
        records, start = [], 0
        for prompt, q in zip(prompts, batch):
            logliks = [float(v) for v in values[start:start + len(q.choices)]]
            start += len(q.choices)
            if any(math.isnan(v) for v in logliks):
                raise ValueError(f"predictor.loglik returned NaN for question {q.id}")
            records.append({"id": q.id, "prompt": prompt, "logliks": logliks})
        return records
    items = [{"id": q.id, "prompt": p, "image": _image_for(q, bench.name), "max_new_tokens": bench.max_new_tokens}
             for p, q in zip(prompts, batch)]
    outputs = list(predictor.predict(items))
    if len(outputs) != len(items):
        raise ValueError(f"predictor.predict returned {len(outputs)} answers for {len(items)} questions")
    for output, q in zip(outputs, batch):
        if not isinstance(output, str):
            raise TypeError(f"predictor.predict returned {type(output).__name__} for question {q.id}, expected str")
    return [{"id": q.id, "prompt": p, "prediction": o} for p, q, o in zip(prompts, batch, outputs)]


def evaluate(benchmark: str, data_path: str, image_folder: str | None, predictor, answers_jsonl: str,
             limit: int | None = None, batch_size: int = 8, results_json: str | None = None,
             progress: bool = True) -> dict:
    """Answer every question of `benchmark` not yet in `answers_jsonl`, then score them all.

    Returns (and writes to `results_json` when given) a dict with the benchmark's "score"
    and its full "metrics".
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    bench = get_benchmark(benchmark)
    method = "loglik" if bench.mode == "loglik" else "predict"
    if not callable(getattr(predictor, method, None)):
        raise TypeError(f"{benchmark} needs a predictor with a {method}() method; got {type(predictor).__name__}")
    questions = select_questions(bench.load(data_path, image_folder), limit)
    if not questions:
        raise ValueError(f"{benchmark}: no questions in {data_path}")

    answers_dir = os.path.dirname(os.path.abspath(answers_jsonl))
    os.makedirs(answers_dir, exist_ok=True)
    answers = read_answers(answers_jsonl, bench.mode)
    remaining = [q for q in questions if q.id not in answers]
    with open(answers_jsonl, "a", encoding="utf-8") as log, \
            tqdm(total=len(questions), initial=len(questions) - len(remaining), desc=benchmark, unit="q",
                 disable=not progress) as bar:
        for start in range(0, len(remaining), batch_size):
            batch = remaining[start:start + batch_size]
            for record in _ask(bench, batch, predictor):
                log.write(json.dumps(record, ensure_ascii=False) + "\n")
                answers[record["id"]] = record[_answer_key(bench.mode)]
            log.flush()
            bar.update(len(batch))

    metrics = bench.score(questions, {q.id: answers[q.id] for q in questions})
    result = {"benchmark": benchmark, "data": data_path, "answers": answers_jsonl,
              "questions": len(questions), "score": metrics["score"], "metrics": metrics}
    if results_json:
        os.makedirs(os.path.dirname(os.path.abspath(results_json)), exist_ok=True)
        with open(results_json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, ensure_ascii=False)
    return result
