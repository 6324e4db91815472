"""POPE: yes/no object hallucination, scored per split (random, popular, adversarial).

Accepted format: the released annotation files `coco_pope_<split>.json`, each JSON lines
`{"question_id", "image", "text", "label": "yes"|"no"}`; `--data` is the folder holding
them (every `coco_pope_*.json` found is a split) or one such file. Images are
`<image_folder>/<image>` (COCO val2014). Question ids repeat across splits, so a
question's id here is `<split>/<question_id>`.

A response counts as "no" when its first sentence (commas removed, split on spaces)
contains the word "No", "no" or "not", else "yes" (LLaVA's POPE evaluation). Per split:
accuracy, precision, recall, F1 (positive class "yes") and the ratio of "yes" answers.
The benchmark's score is the mean F1 over the splits, in percent, as LLaVA-1.5 and
MobileVLM report POPE.
"""
from __future__ import annotations

import glob
import os

from eve_ms.eval.question import DataFormatError, Question, check_unique_ids, read_jsonl, require_keys

SHORT_ANSWER = "Answer the question using a single word or phrase."
_PREFIX = "coco_pope_"


def _split_files(data_path: str) -> list[tuple[str, str]]:
    if os.path.isdir(data_path):
        paths = sorted(glob.glob(os.path.join(data_path, f"{_PREFIX}*.json")))
        if not paths:
            raise FileNotFoundError(f"no {_PREFIX}<split>.json files in {data_path}")
    else:
        paths = [data_path]
    splits = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        splits.append((stem[len(_PREFIX):] if stem.startswith(_PREFIX) else stem, path))
    return splits


def load(data_path: str, image_folder: str | None) -> list[Question]:
    questions = []
    for split, path in _split_files(data_path):
        for number, record in enumerate(read_jsonl(path), 1):
            require_keys(record, ("question_id", "image", "text", "label"), f"{path}: line {number}")
            label = str(record["label"]).strip().lower()
            if label not in ("yes", "no"):
                raise DataFormatError(f"{path}: line {number}: label {record['label']!r} is not yes/no")
            questions.append(Question(
                id=f"{split}/{record['question_id']}", answer=label,
                fields={"question": record["text"], "split": split},
                image=os.path.join(image_folder or "", record["image"]),
            ))
    return check_unique_ids(questions, data_path)


def build_prompt(question: Question) -> str:
    return f"{question.fields['question']}\n{SHORT_ANSWER}"


def parse_yes_no(response: str) -> str:
    first_sentence = response.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def binary_metrics(predictions: list[str], labels: list[str]) -> dict:
    """Accuracy, precision, recall, F1 (positive "yes") and yes-ratio, in percent."""
    tp = sum(p == "yes" and l == "yes" for p, l in zip(predictions, labels))
    fp = sum(p == "yes" and l == "no" for p, l in zip(predictions, labels))
    tn = sum(p == "no" and l == "no" for p, l in zip(predictions, labels))
    fn = sum(p == "no" and l == "yes" for p, l in zip(predictions, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(labels)
    return {"accuracy": 100.0 * (tp + tn) / n, "precision": 100.0 * precision, "recall": 100.0 * recall,
            "f1": 100.0 * f1, "yes_ratio": 100.0 * (tp + fp) / n, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "total": n}


def score(questions: list[Question], responses: dict[str, str]) -> dict:
    by_split: dict[str, tuple[list[str], list[str]]] = {}
    for q in questions:
        preds, labels = by_split.setdefault(q.fields["split"], ([], []))
        preds.append(parse_yes_no(responses[q.id]))
        labels.append(q.answer)
    splits = {split: binary_metrics(p, l) for split, (p, l) in by_split.items()}
    mean_f1 = sum(m["f1"] for m in splits.values()) / len(splits)
    mean_accuracy = sum(m["accuracy"] for m in splits.values()) / len(splits)
    return {"score": mean_f1, "f1": mean_f1, "accuracy": mean_accuracy, "splits": splits}
