"""Language multiple choice scored by log-likelihood: MMLU, C-Eval, CMMLU, BoolQ, PIQA, EPRSTMT, AX-b.

Each question is a context and a few continuations; the model's answer is the
continuation with the highest log-likelihood given the context (`predictor.loglik`,
which runs the language-only path: no image anywhere). Zero-shot prompts.

Accepted formats (`--data`):
- MMLU: the release's `data/` folder (reads `test/*_test.csv`), a folder of such csv
  files, or one of them; rows `question,A,B,C,D,answer` without a header.
- C-Eval: the release folder (reads `val/*_val.csv`; the test split has no answers), a
  folder of such csv files, or one; header `id,question,A,B,C,D,answer[,explanation]`.
  Chinese subject names come from `subject_mapping.json` beside `val/` when present.
- CMMLU: the release folder (reads `test/*.csv`), a folder of csv files, or one; header
  `,Question,A,B,C,D,Answer`.
- BoolQ: JSON lines `{"question", "passage", "label"|"answer": true/false}` (SuperGLUE or
  the original release).
- PIQA: JSON lines `{"goal", "sol1", "sol2", "label"?}`; without `label`, the labels come
  from `<name>-labels.lst` beside the file (one 0/1 per line), as released.
- EPRSTMT (FewCLUE): JSON lines `{"id"?, "sentence", "label": "Positive"|"Negative"}`.
- AX-b (SuperGLUE): JSON lines `{"idx", "sentence1", "sentence2", "label":
  "entailment"|"not_entailment"}`.

Scores, in percent: accuracy; for the subject benchmarks (MMLU, C-Eval, CMMLU) the
benchmark's score is the unweighted mean of the per-subject accuracies, as OpenCompass
summarises them, with the pooled accuracy beside it. Also reported: accuracy with each
continuation's log-likelihood divided by its length in characters, and for two-way
benchmarks Matthews' correlation.
"""
from __future__ import annotations

import glob
import math
import os
from collections import defaultdict

from eve_ms.eval.question import (
    DataFormatError, Question, check_unique_ids, lettered_options, read_json, read_jsonl, read_table, require_keys,
)

LETTERS = ("A", "B", "C", "D")


# ---- subject benchmarks: MMLU, C-Eval, CMMLU -------------------------------------------------

def _subject_files(data_path: str, split_folder: str, pattern: str) -> list[str]:
    if os.path.isfile(data_path):
        return [data_path]
    folder = os.path.join(data_path, split_folder)
    if not os.path.isdir(folder):
        folder = data_path
    paths = sorted(glob.glob(os.path.join(folder, pattern)))
    if not paths:
        raise FileNotFoundError(f"no {pattern} files in {folder}")
    return paths


def _read_subject_csv(path: str) -> list[tuple[str, list[str], str]]:
    """(question, four options, answer letter) rows of one subject's csv, with or without header."""
    rows = read_table(path, delimiter=",", header=False)
    if not rows:
        raise DataFormatError(f"{path}: empty file")
    header = [cell.strip().lower() for cell in rows[0]]
    if all(letter.lower() in header for letter in LETTERS) and "question" in header and "answer" in header:
        columns = [header.index(name) for name in ("question", "a", "b", "c", "d", "answer")]
        body, first_line = rows[1:], 2
    else:
        columns, body, first_line = [0, 1, 2, 3, 4, 5], rows, 1
    parsed = []
    for number, row in enumerate(body, first_line):
        if len(row) <= max(columns):
            raise DataFormatError(f"{path}:{number}: {len(row)} columns, expected question, A-D and answer")
        question, a, b, c, d, answer = (row[i] for i in columns)
        answer = answer.strip()
        if answer not in LETTERS:
            raise DataFormatError(f"{path}:{number}: answer {answer!r} is not one of {LETTERS}")
        parsed.append((question, [a, b, c, d], answer))
    return parsed


def _subject_questions(paths: list[str], suffix: str, names: dict[str, str]) -> list[Question]:
    questions = []
    for path in paths:
        subject = os.path.splitext(os.path.basename(path))[0]
        subject = subject[:-len(suffix)] if suffix and subject.endswith(suffix) else subject
        for number, (question, options, answer) in enumerate(_read_subject_csv(path)):
            questions.append(Question(
                id=f"{subject}/{number}", answer=LETTERS.index(answer),
                fields={"subject": subject, "subject_name": names.get(subject, subject.replace("_", " ")),
                        "question": question, "options": options},
            ))
    return questions


def load_mmlu(data_path: str, image_folder: str | None = None) -> list[Question]:
    questions = _subject_questions(_subject_files(data_path, "test", "*.csv"), "_test", {})
    for q in questions:
        q.choices = tuple(f" {letter}" for letter in LETTERS)
    return check_unique_ids(questions, data_path)


def load_ceval(data_path: str, image_folder: str | None = None) -> list[Question]:
    mapping_path = os.path.join(data_path, "subject_mapping.json") if os.path.isdir(data_path) else ""
    names = {k: v[1] for k, v in read_json(mapping_path).items()} if os.path.exists(mapping_path) else {}
    questions = _subject_questions(_subject_files(data_path, "val", "*.csv"), "_val", names)
    for q in questions:
        q.choices = LETTERS
    return check_unique_ids(questions, data_path)


def load_cmmlu(data_path: str, image_folder: str | None = None) -> list[Question]:
    questions = _subject_questions(_subject_files(data_path, "test", "*.csv"), "", {})
    for q in questions:
        q.choices = LETTERS
    return check_unique_ids(questions, data_path)


def prompt_mmlu(q: Question) -> str:
    return (f"The following are multiple choice questions (with answers) about {q.fields['subject_name']}.\n\n"
            f"{q.fields['question']}\n{lettered_options(q.fields['options'])}\nAnswer:")


def prompt_ceval(q: Question) -> str:
    return (f"以下是中国关于{q.fields['subject_name']}考试的单项选择题，请选出其中的正确答案。\n\n"
            f"{q.fields['question']}\n{lettered_options(q.fields['options'])}\n答案：")


def prompt_cmmlu(q: Question) -> str:
    return (f"以下是关于{q.fields['subject_name']}的单项选择题，请直接给出正确答案的选项。\n\n"
            f"题目：{q.fields['question']}\n{lettered_options(q.fields['options'])}\n答案是：")


# ---- sentence benchmarks: BoolQ, PIQA, EPRSTMT, AX-b -----------------------------------------

def _label(record: dict, keys: tuple[str, ...], values: dict, where: str):
    for key in keys:
        if key in record:
            value = record[key]
            if isinstance(value, str):
                value = value.strip()
            if value in values:
                return values[value]
            raise DataFormatError(f"{where}: {key} {value!r} is not one of {list(values)}")
    raise DataFormatError(f"{where}: no label (one of {list(keys)})")


def load_boolq(data_path: str, image_folder: str | None = None) -> list[Question]:
    questions = []
    for number, record in enumerate(read_jsonl(data_path)):
        where = f"{data_path}: record {number}"
        require_keys(record, ("question", "passage"), where)
        answer = _label(record, ("label", "answer"), {False: 0, True: 1, "false": 0, "true": 1}, where)
        questions.append(Question(id=str(record.get("idx", number)), answer=answer, choices=(" no", " yes"),
                                  fields={"question": record["question"], "passage": record["passage"]}))
    return check_unique_ids(questions, data_path)


def load_piqa(data_path: str, image_folder: str | None = None) -> list[Question]:
    records = read_jsonl(data_path)
    labels_path = os.path.splitext(data_path)[0] + "-labels.lst"
    if records and "label" not in records[0]:
        with open(labels_path, encoding="utf-8") as f:  # FileNotFoundError names the file
            labels = [line.strip() for line in f if line.strip()]
        if len(labels) != len(records):
            raise DataFormatError(f"{labels_path}: {len(labels)} labels for {len(records)} questions in {data_path}")
        records = [{**r, "label": int(l)} for r, l in zip(records, labels)]
    questions = []
    for number, record in enumerate(records):
        where = f"{data_path}: record {number}"
        require_keys(record, ("goal", "sol1", "sol2"), where)
        answer = _label(record, ("label",), {0: 0, 1: 1, "0": 0, "1": 1}, where)
        questions.append(Question(id=str(record.get("id", number)), answer=answer,
                                  choices=(f" {record['sol1']}", f" {record['sol2']}"),
                                  fields={"goal": record["goal"]}))
    return check_unique_ids(questions, data_path)


def load_eprstmt(data_path: str, image_folder: str | None = None) -> list[Question]:
    questions = []
    for number, record in enumerate(read_jsonl(data_path)):
        where = f"{data_path}: record {number}"
        require_keys(record, ("sentence",), where)
        answer = _label(record, ("label",), {"Negative": 0, "Positive": 1}, where)
        questions.append(Question(id=str(record.get("id", number)), answer=answer, choices=("消极", "积极"),
                                  fields={"sentence": record["sentence"]}))
    return check_unique_ids(questions, data_path)


def load_axb(data_path: str, image_folder: str | None = None) -> list[Question]:
    questions = []
    for number, record in enumerate(read_jsonl(data_path)):
        where = f"{data_path}: record {number}"
        require_keys(record, ("sentence1", "sentence2"), where)
        answer = _label(record, ("label",), {"entailment": 0, "not_entailment": 1}, where)
        questions.append(Question(id=str(record.get("idx", number)), answer=answer, choices=(" True", " False"),
                                  fields={"sentence1": record["sentence1"], "sentence2": record["sentence2"]}))
    return check_unique_ids(questions, data_path)


def prompt_boolq(q: Question) -> str:
    return f"{q.fields['passage']}\nQuestion: {q.fields['question']}?\nAnswer:"


def prompt_piqa(q: Question) -> str:
    return f"Question: {q.fields['goal']}\nAnswer:"


def prompt_eprstmt(q: Question) -> str:
    return f"内容：\"{q.fields['sentence']}\"\n情感："


def prompt_axb(q: Question) -> str:
    return f"{q.fields['sentence1']}\nQuestion: {q.fields['sentence2']} True or False?\nAnswer:"


# ---- scoring ----------------------------------------------------------------------------------

def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # ties: the first


def matthews_correlation(predictions: list[int], labels: list[int]) -> float:
    tp = sum(p == 1 and l == 1 for p, l in zip(predictions, labels))
    tn = sum(p == 0 and l == 0 for p, l in zip(predictions, labels))
    fp = sum(p == 1 and l == 0 for p, l in zip(predictions, labels))
    fn = sum(p == 0 and l == 1 for p, l in zip(predictions, labels))
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def score(questions: list[Question], responses: dict[str, list[float]]) -> dict:
    """`responses[id]` holds one log-likelihood per continuation of the question."""
    predictions, normalised = [], []
    for q in questions:
        logliks = responses[q.id]
        if len(logliks) != len(q.choices):
            raise ValueError(f"question {q.id}: {len(logliks)} log-likelihoods for {len(q.choices)} choices")
        predictions.append(_argmax(list(logliks)))
        normalised.append(_argmax([ll / max(1, len(c)) for ll, c in zip(logliks, q.choices)]))
    labels = [q.answer for q in questions]
    accuracy = 100.0 * sum(p == l for p, l in zip(predictions, labels)) / len(questions)
    result = {"score": accuracy, "accuracy": accuracy, "total": len(questions),
              "accuracy_length_normalised": 100.0 * sum(p == l for p, l in zip(normalised, labels)) / len(questions)}
    if all(len(q.choices) == 2 for q in questions):
        result["matthews_correlation"] = matthews_correlation(predictions, labels)
    subjects: dict[str, list[bool]] = defaultdict(list)
    for q, p in zip(questions, predictions):
        if "subject" in q.fields:
            subjects[q.fields["subject"]].append(p == q.answer)
    if subjects:
        per_subject = {s: 100.0 * sum(v) / len(v) for s, v in sorted(subjects.items())}
        result["accuracy_by_subject"] = per_subject
        result["subject_mean_accuracy"] = sum(per_subject.values()) / len(per_subject)
        result["score"] = result["subject_mean_accuracy"]
    return result
