"""TextVQA (val v0.5.1): VQA accuracy over the ten human answers, prompted as LLaVA, MoE-LLaVA and Eve prompt it.

The paper's protocol (the `textvqa.sh` eval scripts of LLaVA v1.5, MoE-LLaVA and the Eve release) asks
the questions of LLaVA's `llava_textvqa_val_v051_ocr.jsonl`, whose prompts carry the image's OCR tokens
("<question>\nReference OCR token: <tokens>\nAnswer the question using a single word or phrase."),
and scores them against `TextVQA_0.5.1_val.json`. `--data` is either
- a folder holding both files (the protocol), or LLaVA's question file with the annotation file
  beside it: each LLaVA record is joined to its annotation as LLaVA's `eval_textvqa.py` joins them,
  by (image id, lower-cased question) where the question is read back from the prompt
  (`prompt_processor`; LLaVA's `question_id` is the image id); its prompt is used verbatim and its
  image is `<image_folder>/<record image>`;
- or `TextVQA_0.5.1_val.json` alone (`{"data": [{"question_id", "image_id", "question", "answers":
  [10 strings], "ocr_tokens"?}]}`): prompts are built from the annotation, with a "Reference OCR
  token:" line only where a record carries `ocr_tokens`. Not the paper's protocol (no LLaVA OCR
  tokens: several points lower), so it warns. Images are `<image_folder>/<image_id>.jpg`.

Scoring is the standard VQA accuracy as the TextVQA evaluator (LLaVA's `m4c_evaluator.py`) computes it:
prediction and human answers are normalised (`normalize_vqa_answer`); for each of the ten annotators,
the prediction scores min(#matches among the other nine / 3, 1); the question's accuracy is the mean
over the ten. So 3 matching humans give 0.9, 4 or more give 1.
"""
from __future__ import annotations

import os
import re
import warnings

from eve_ms.eval.normalize import normalize_vqa_answer
from eve_ms.eval.question import (
    DataFormatError, Question, check_unique_ids, read_json, read_jsonl, require_keys, require_path,
)

SHORT_ANSWER = "Answer the question using a single word or phrase."
NUM_ANNOTATORS = 10
LLAVA_QUESTIONS = "llava_textvqa_val_v051_ocr.jsonl"
ANNOTATIONS = "TextVQA_0.5.1_val.json"
_OCR_PROMPT_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def _annotations(path: str) -> list[dict]:
    data = read_json(path)
    records = data["data"] if isinstance(data, dict) and "data" in data else data
    if not isinstance(records, list):
        raise DataFormatError(f"{path}: expected TextVQA's {{'data': [...]}} or a list of questions")
    for number, record in enumerate(records):
        require_keys(record, ("question_id", "image_id", "question", "answers"), f"{path}: record {number}")
        if len(record["answers"]) != NUM_ANNOTATORS:
            raise DataFormatError(f"{path}: question {record['question_id']} has {len(record['answers'])} "
                                  f"answers, VQA accuracy needs {NUM_ANNOTATORS}")
    return records


def llava_question(prompt: str) -> str | None:
    """The lower-cased question in a LLaVA TextVQA prompt (`prompt_processor` of LLaVA's eval_textvqa.py)."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _OCR_PROMPT_QUESTION.search(prompt)
        question = match.group(1) if match else None
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        question = None
    return question.lower() if question is not None else None


def _llava_files(data_path: str) -> tuple[str, str] | None:
    """(LLaVA question file, annotation file), or None when `data_path` is the annotation file alone."""
    if os.path.isdir(data_path):
        return (require_path(os.path.join(data_path, LLAVA_QUESTIONS), "LLaVA's TextVQA question file"),
                require_path(os.path.join(data_path, ANNOTATIONS), "TextVQA annotations"))
    if data_path.endswith(".jsonl"):
        return data_path, require_path(os.path.join(os.path.dirname(data_path), ANNOTATIONS),
                                       f"TextVQA annotations beside {data_path}")
    return None


def _load_llava(questions_path: str, annotations_path: str, image_folder: str | None) -> list[Question]:
    # a dict as LLaVA builds it: a repeated (image, question) keeps the last annotation
    annotations = {(str(a["image_id"]), a["question"].lower()): a for a in _annotations(annotations_path)}
    questions = []
    for number, record in enumerate(read_jsonl(questions_path), 1):
        where = f"{questions_path}: line {number}"
        require_keys(record, ("question_id", "image", "text"), where)
        question = llava_question(record["text"])
        if question is None:
            raise DataFormatError(f"{where}: cannot read the question back from its prompt {record['text']!r}")
        annotation = annotations.get((str(record["question_id"]), question))
        if annotation is None:
            raise DataFormatError(f"{where}: no annotation in {annotations_path} for image "
                                  f"{record['question_id']!r} and question {question!r}")
        questions.append(Question(
            id=str(annotation["question_id"]), answer=list(annotation["answers"]),
            fields={"prompt": record["text"]}, image=os.path.join(image_folder or "", record["image"]),
        ))
    return check_unique_ids(questions, questions_path)


def load(data_path: str, image_folder: str | None) -> list[Question]:
    files = _llava_files(data_path)
    if files is not None:
        return _load_llava(*files, image_folder)
    warnings.warn(f"{data_path}: TextVQA without LLaVA's {LLAVA_QUESTIONS}: the prompts lack its OCR tokens, "
                  "so the score is not comparable with the paper's (pass the folder holding both files)")
    questions = []
    for record in _annotations(data_path):
        lines = [record["question"]]
        if record.get("ocr_tokens"):
            lines.append("Reference OCR token: " + ", ".join(record["ocr_tokens"]))
        questions.append(Question(
            id=str(record["question_id"]), answer=list(record["answers"]),
            fields={"prompt": "\n".join(lines + [SHORT_ANSWER])},
            image=os.path.join(image_folder or "", f"{record['image_id']}.jpg"),
        ))
    return check_unique_ids(questions, data_path)


def build_prompt(question: Question) -> str:
    return question.fields["prompt"]


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
