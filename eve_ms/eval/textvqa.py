"""TextVQA (val v0.5.1): VQA accuracy over the ten human answers.

Accepted format: the official `TextVQA_0.5.1_val.json`, `{"data": [{"question_id",
"image_id", "question", "answers": [10 strings], "ocr_tokens"?}]}` (a bare list of such
records works too). Images are `<image_folder>/<image_id>.jpg`. When a record carries
`ocr_tokens`, the prompt adds them as LLaVA's "Reference OCR token:" line.

Scoring is the standard VQA accuracy as the TextVQA evaluator computes it: prediction and
human answers are normalised (`normalize_vqa_answer`); for each of the ten annotators,
the prediction scores min(#matches among the other nine / 3, 1); the question's
accuracy is the mean over the ten. So 3 matching humans give 0.9, 4 or more give 1.
"""
from __future__ import annotations

import os

from eve_ms.eval.normalize import normalize_vqa_answer
from eve_ms.eval.question import DataFormatError, Question, check_unique_ids, read_json, require_keys

SHORT_ANSWER = "Answer the question using a single word or phrase."
NUM_ANNOTATORS = 10


def load(data_path: str, image_folder: str | None) -> list[Question]:
    data = read_json(data_path)
    records = data["data"] if isinstance(data, dict) and "data" in data else data
    if not isinstance(records, list):
        raise DataFormatError(f"{data_path}: expected TextVQA's {{'data': [...]}} or a list of questions")
    questions = []
    for number, record in enumerate(records):
        require_keys(record, ("question_id", "image_id", "question", "answers"), f"{data_path}: record {number}")
        if len(record["answers"]) != NUM_ANNOTATORS:
            raise DataFormatError(f"{data_path}: question {record['question_id']} has {len(record['answers'])} "
                                  f"answers, VQA accuracy needs {NUM_ANNOTATORS}")
        questions.append(Question(
            id=str(record["question_id"]), answer=list(record["answers"]),
            fields={"question": record["question"], "ocr_tokens": record.get("ocr_tokens")},
            image=os.path.join(image_folder or "", f"{record['image_id']}.jpg"),
        ))
    return check_unique_ids(questions, data_path)


def build_prompt(question: Question) -> str:
    lines = [question.fields["question"]]
    if question.fields.get("ocr_tokens"):
        lines.append("Reference OCR token: " + ", ".join(question.fields["ocr_tokens"]))
    lines.append(SHORT_ANSWER)
    return "\n".join(lines)


def vqa_accuracy(prediction: str, human_answers: list[str]) -> float:
    """Accuracy of one prediction against ten human answers, in [0, 1]."""
    predicted = normalize_vqa_answer(prediction)
    humans = [normalize_vqa_answer(a) for a in human_answers]
    matches = sum(h == predicted for h in humans)
    total = 0.0
    for h in humans:  # leave annotator h out: the others' matches
        total += min(1.0, (matches - (h == predicted)) / 3.0)
    return total / len(humans)


def score(questions: list[Question], responses: dict[str, str]) -> dict:
    accuracy = 100.0 * sum(vqa_accuracy(responses[q.id], q.answer) for q in questions) / len(questions)
    return {"score": accuracy, "accuracy": accuracy, "total": len(questions)}
