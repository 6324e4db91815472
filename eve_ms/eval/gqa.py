"""GQA (test-dev balanced): exact match after GQA's answer normalisation.

Accepted format: the official questions file (`testdev_balanced_questions.json`), a JSON
object `{question_id: {"imageId", "question", "answer", "types"?, ...}}`. Images are
`<image_folder>/<imageId>.jpg`. The prompt is the question plus LLaVA's short-answer
instruction; a prediction is right when it equals the answer after both are trimmed,
stripped of trailing periods and lower-cased (LLaVA's conversion before GQA's own
exact-match `eval.py`).
"""
from __future__ import annotations

import os
from collections import defaultdict

from eve_ms.eval.normalize import normalize_short_answer
from eve_ms.eval.question import DataFormatError, Question, check_unique_ids, read_json, require_keys

SHORT_ANSWER = "Answer the question using a single word or phrase."


def load(data_path: str, image_folder: str | None) -> list[Question]:
    data = read_json(data_path)
    if not isinstance(data, dict):
        raise DataFormatError(f"{data_path}: expected GQA's object of questions keyed by id, got {type(data).__name__}")
    questions = []
    for qid, record in data.items():
        require_keys(record, ("imageId", "question", "answer"), f"{data_path}: question {qid}")
        structural = (record.get("types") or {}).get("structural")
        questions.append(Question(
            id=str(qid), answer=record["answer"],
            fields={"question": record["question"], "structural": structural},
            image=os.path.join(image_folder or "", f"{record['imageId']}.jpg"),
        ))
    return check_unique_ids(questions, data_path)


def build_prompt(question: Question) -> str:
    return f"{question.fields['question']}\n{SHORT_ANSWER}"


def score(questions: list[Question], responses: dict[str, str]) -> dict:
    correct = 0
    by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for q in questions:
        hit = normalize_short_answer(responses[q.id]) == normalize_short_answer(q.answer)
        correct += hit
        if q.fields.get("structural"):
            by_type[q.fields["structural"]][0] += hit
            by_type[q.fields["structural"]][1] += 1
    accuracy = 100.0 * correct / len(questions)
    return {
        "score": accuracy,
        "accuracy": accuracy,
        "correct": correct,
        "total": len(questions),
        "accuracy_by_structural_type": {t: 100.0 * c / n for t, (c, n) in sorted(by_type.items())},
    }
