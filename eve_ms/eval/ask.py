"""Questions to model calls and back: the records an answers file holds.

The predictor is any object with
  predict(items) -> list[str]: one generated answer per item; an item is a dict with "id",
      "prompt" (the user turn, without template or image placeholder), "image" (None, an image file
      path, or a PIL image), "max_new_tokens", "chat" (False: plain text for a base LM, no
      conversation template) and "truncate" (True: a prompt too long for the context keeps its end);
  ppl(texts) -> list[float]: the mean token loss of each whole text, plain text with bos, the
      language-only path (the choice benchmarks' protocol);
  loglik(contexts, continuations) -> list[float]: log p(continuation | context) summed over the
      continuation's tokens (the `--choice-scoring loglik` option);
and, to fit prompts to the model's context as OpenCompass does, optionally `max_length` (the
context in tokens), `num_tokens(text)` (the tokens `ppl` scores, bos included) and
`prompt_length(item)` (the tokens of a generation prompt before any truncation).

Choice questions keep as many of their in-context examples as fit: OpenCompass's PPLInferencer
drops the last example while a label's text is longer than the context, label by label in order
(a later label starts from the examples the earlier ones kept). A text that does not fit even
without examples is scored truncated (its start dropped) and recorded as such.
"""
from __future__ import annotations

import base64
import io
import math
import os

from eve_ms.eval.question import Question
from eve_ms.eval.registry import Benchmark


def image_for(question: Question, benchmark: str):
    if question.image_b64 is not None:
        from PIL import Image

        try:
            return Image.open(io.BytesIO(base64.b64decode(question.image_b64))).convert("RGB")
        except Exception as err:
            raise ValueError(f"{benchmark}: question {question.id}: cannot decode its base64 image ({err})") from None
    if question.image is not None and not os.path.exists(question.image):
        raise FileNotFoundError(f"{benchmark}: image of question {question.id} not found: {question.image}")
    return question.image


def fit_shots(bench: Benchmark, question: Question, shots: int, predictor) -> tuple[list[tuple[str, str]], list[int]]:
    """The candidates (context, continuation) with the examples that fit, and the examples kept per label."""
    max_length = getattr(predictor, "max_length", None)
    count = getattr(predictor, "num_tokens", None)
    candidates = bench.candidates(question, shots)
    if not shots or max_length is None or count is None:
        return candidates, [shots] * len(candidates)
    kept, fitted = [], []
    for label in range(len(candidates)):
        candidate = bench.candidates(question, shots)[label]  # with what the earlier labels kept
        while shots > 0 and count(candidate[0] + candidate[1]) > max_length:
            shots -= 1
            candidate = bench.candidates(question, shots)[label]
        fitted.append(candidate)
        kept.append(shots)
    return fitted, kept


def _too_long(predictor, texts: list[str]) -> bool:
    max_length = getattr(predictor, "max_length", None)
    count = getattr(predictor, "num_tokens", None)
    return max_length is not None and count is not None and any(count(t) > max_length for t in texts)


def ask_choice(bench: Benchmark, batch: list[Question], predictor, shots: int, scoring: str) -> list[dict]:
    fitted = [fit_shots(bench, q, shots, predictor) for q in batch]
    pairs = [pair for candidates, _ in fitted for pair in candidates]
    if scoring == "ppl":
        values = list(predictor.ppl([context + continuation for context, continuation in pairs]))
    else:
        values = list(predictor.loglik([c for c, _ in pairs], [x for _, x in pairs]))
    if len(values) != len(pairs):
        raise ValueError(f"predictor.{scoring} returned {len(values)} values for {len(pairs)} candidates")
    records, start = [], 0
    for q, (candidates, kept) in zip(batch, fitted):
        scores = [float(v) for v in values[start:start + len(candidates)]]
        start += len(candidates)
        if any(math.isnan(v) for v in scores):
            raise ValueError(f"predictor.{scoring} returned NaN for question {q.id}")
        record = {"id": q.id, "shots": kept, "scores": scores}
        if _too_long(predictor, [c + x for c, x in candidates]):
            record["truncated"] = True
        records.append(record)
    return records


def ask_generate(bench: Benchmark, batch: list[Question], predictor, max_new_tokens: int) -> list[dict]:
    items = [{"id": q.id, "prompt": bench.build_prompt(q), "image": image_for(q, bench.name),
              "max_new_tokens": max_new_tokens, "chat": bench.chat, "truncate": bench.truncate} for q in batch]
    outputs = list(predictor.predict(items))
    if len(outputs) != len(items):
        raise ValueError(f"predictor.predict returned {len(outputs)} answers for {len(items)} questions")
    records = []
    for output, item in zip(outputs, items):
        if not isinstance(output, str):
            raise TypeError(f"predictor.predict returned {type(output).__name__} for question {item['id']}, "
                            "expected str")
        record = {"id": item["id"], "prompt": item["prompt"], "prediction": output}
        max_length = getattr(predictor, "max_length", None)
        if bench.truncate and max_length is not None and callable(getattr(predictor, "prompt_length", None)):
            record["prompt_tokens"] = predictor.prompt_length(item)
            record["truncated_tokens"] = max(0, record["prompt_tokens"] - (max_length - max_new_tokens))
        records.append(record)
    return records
