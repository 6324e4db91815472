"""What the demo measures on a trained stage: VQA accuracy, language accuracy and loss, routing.

VQA accuracy is exact match of the greedy answer. It is computed teacher-forced in one forward
pass: greedy decoding reproduces the reference answer (and its end-of-turn token) exactly when,
at every answer position, the argmax of the logits given the reference prefix is the reference
token; so one batched forward pass gives the same verdict as generating, far faster.

Language accuracy is multiple choice by summed log-likelihood of each option (as lm-eval does),
and language loss the mean token loss on held-out-style sentences, both through the language-only
path of EVF models (the `moe` baseline has none and routes text like everything else).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from eve_ms.config import IGNORE_INDEX
from eve_ms.data import ImageProcessor, get_template
from eve_ms.data.samples import SampleEncoder
from eve_ms.data.tokenizer import special_ids

BATCH = 160


@dataclass
class EvalSet:
    """The demo's held-out questions and language items, encoded once per tokenizer."""

    vqa: list  # dicts with type, question, answer, options, image
    language_questions: list  # dicts with context, options, answer
    language_sentences: list  # strings


def load_eval_set(paths: dict) -> EvalSet:
    with open(paths["vqa_eval"], encoding="utf-8") as fh:
        vqa = json.load(fh)
    with open(paths["language_eval"], encoding="utf-8") as fh:
        language = json.load(fh)
    return EvalSet(vqa, language["questions"], language["sentences"])


def _pad(rows: list, value: int, length: int) -> np.ndarray:
    out = np.full((len(rows), length), value, np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _batches(n: int, size: int = BATCH):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _forward(model, ids, mask, pixels=None):
    import mindspore as ms

    pixel_tensor = None if pixels is None else ms.Tensor(pixels)
    logits, _, _, _, stats = model.forward(ms.Tensor(ids), ms.Tensor(mask), pixel_tensor)
    return logits.asnumpy(), stats.asnumpy()


def vqa_accuracy(model, config, tokenizer, items: list, image_folder: str, max_length: int) -> dict:
    """Exact-match accuracy overall and per question type, plus routing statistics of EVF layers."""
    encoder = SampleEncoder(get_template("v1"), tokenizer, config.num_image_tokens, max_length,
                            ImageProcessor.from_vision_config(config.vision, "pad"), image_folder)
    pad = special_ids(tokenizer).pad
    samples = []
    for item in items:
        record = {"id": item["id"], "image": item["image"],
                  "conversations": [{"from": "human", "value": "<image>\n" + item["question"]},
                                    {"from": "gpt", "value": item["answer"]}]}
        samples.append(encoder.encode(record))
    correct = np.zeros(len(items), bool)
    stats_sum = None
    for part in _batches(len(samples)):
        chunk = samples[part]
        ids = _pad([s.input_ids for s in chunk], pad, max_length)
        labels = _pad([s.labels for s in chunk], IGNORE_INDEX, max_length)
        mask = _pad([np.ones(len(s.input_ids), np.int32) for s in chunk], 0, max_length)
        pixels = np.stack([s.pixel_values for s in chunk]).astype(np.float32)
        logits, stats = _forward(model, ids, mask, pixels)
        predicted = logits[:, :-1].argmax(-1)
        targets = labels[:, 1:]
        counted = targets != IGNORE_INDEX
        correct[part] = np.all((predicted == targets) | ~counted, axis=1)
        if stats.size:
            stats_sum = stats if stats_sum is None else stats_sum + stats
    by_type = {}
    for item, ok in zip(items, correct):
        by_type.setdefault(item["type"], []).append(ok)
    result = {
        "accuracy": float(correct.mean()),
        "by_type": {k: float(np.mean(v)) for k, v in sorted(by_type.items())},
        "num_questions": len(items),
    }
    if stats_sum is not None:
        result["routing"] = routing_summary(stats_sum)
    return result


def routing_summary(stats: np.ndarray) -> dict:
    """Per EVF layer: token success rate (kept / valid) and the token counts behind it."""
    from eve_ms.models.evf import ROUTING_STAT_NAMES

    out = []
    for row in stats:
        named = dict(zip(ROUTING_STAT_NAMES, (float(v) for v in row)))
        kept = named["kept_language"] + named["kept_vision"]
        named["success_rate"] = kept / max(named["valid"], 1.0)
        out.append(named)
    return {"layers": out}


def _text_ids(tokenizer, text: str) -> list:
    bos = special_ids(tokenizer).bos
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([bos] if bos is not None else []) + ids


def language_logits(model, tokenizer, sentences: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, ids, mask) of the sentences, right-padded into one batch."""
    rows = [_text_ids(tokenizer, s) for s in sentences]
    length = max(len(r) for r in rows)
    ids = _pad(rows, special_ids(tokenizer).pad, length)
    mask = _pad([np.ones(len(r), np.int32) for r in rows], 0, length)
    logits = np.concatenate([_forward(model, ids[p], mask[p])[0] for p in _batches(len(rows))])
    return logits, ids, mask


def _token_logprobs(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log p(ids[t + 1] | prefix) for every position, float64."""
    z = logits[:, :-1].astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.take_along_axis(logp, ids[:, 1:, None].astype(np.int64), -1)[..., 0]


def language_scores(model, tokenizer, evalset: EvalSet) -> dict:
    """Multiple-choice accuracy (summed option log-likelihood) and mean token loss on the sentences."""
    logits, ids, mask = language_logits(model, tokenizer, evalset.language_sentences)
    logp = _token_logprobs(logits, ids)
    counted = mask[:, 1:].astype(bool)
    loss = float(-(logp * counted).sum() / counted.sum())

    texts, spans = [], []
    for q in evalset.language_questions:
        context_len = len(_text_ids(tokenizer, q["context"]))
        for option in q["options"]:
            texts.append(q["context"] + option)
            spans.append(context_len)
    option_logits, option_ids, option_mask = language_logits(model, tokenizer, texts)
    option_logp = _token_logprobs(option_logits, option_ids)
    scores = []
    for row, start in enumerate(spans):
        valid = option_mask[row, 1:].astype(bool)
        positions = np.arange(valid.shape[0]) >= start - 1  # predictions of the option's tokens
        scores.append(float(option_logp[row][valid & positions].sum()))
    correct, k = [], 0
    for q in evalset.language_questions:
        n = len(q["options"])
        correct.append(int(np.argmax(scores[k:k + n])) == q["answer"])
        k += n
    chance = float(np.mean([1.0 / len(q["options"]) for q in evalset.language_questions]))
    return {"accuracy": float(np.mean(correct)), "chance": chance, "loss": loss,
            "num_questions": len(evalset.language_questions)}


def load_stage_model(directory: str, evf_mode: str | None = None):
    """(model, config, tokenizer) of a stage's checkpoint directory, in PyNative mode for evaluation."""
    import mindspore as ms

    from eve_ms.checkpoint_dir import load_eve_checkpoint

    # Training left the context in graph mode, where every sub-cell call below would compile a
    # graph per input shape (measured 5x slower than running the evaluation eagerly).
    ms.set_context(mode=ms.PYNATIVE_MODE)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"stage output not found: {directory}")
    return load_eve_checkpoint(directory, evf_mode=evf_mode)
