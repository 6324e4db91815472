"""Loaders of the language benchmarks of Table 11 (multiple choice), from their released files.

Each question keeps the record as OpenCompass's dataset class reads it (`fields["entry"]`: the
columns its prompt templates fill in, in the release's column order) and its gold label;
`eve_ms.eval.opencompass` renders the prompts. Folders and splits are those of OpenCompass's
ppl configs (open-compass/opencompass at 5c6dc908, `configs/datasets/*/*_ppl_*.py`) and its readers
(`opencompass/datasets/{mmlu,ceval,cmmlu,boolq,piqa}.py`):

- MMLU: the release's `data/` folder: `test/<subject>_test.csv` asked, `dev/<subject>_dev.csv`
  the in-context examples; rows `question,A,B,C,D,answer` without a header (14,042 test questions).
- C-Eval: the release folder: `val/<subject>_val.csv` asked (the test split has no answers;
  1,346 questions), `dev/<subject>_dev.csv` the examples; header `id,question,A,B,C,D,answer,...`.
- CMMLU: the release folder: `test/<subject>.csv` asked, `dev/<subject>.csv` the
  examples; header `,Question,A,B,C,D,Answer`.
- BoolQ: SuperGLUE `BoolQ/val.jsonl` (3,270), `{"question", "passage", "label"}`; the label is a
  JSON boolean (SuperGLUE release) or "true"/"false" (OpenCompass's data package).
- AX-b: SuperGLUE `AX-b/AX-b.jsonl` (1,104), `{"sentence1", "sentence2", "label":
  "entailment" | "not_entailment"}`.
- PIQA: the validation split, `dev.jsonl` / `valid.jsonl` (1,838) `{"goal", "sol1", "sol2"}` with
  its labels in `<name>-labels.lst` beside it (one 0/1 per line), or a `label` in each record.
- EPRSTMT (FewCLUE): `dev_few_all.json` (160), JSON lines `{"id", "sentence", "label":
  "Positive" | "Negative"}`.

Subject benchmarks read every subject file present; the score averages the subjects read and
names the ones of OpenCompass's list that are missing (a partial download is visible, not hidden).
"""
from __future__ import annotations

import glob
import os

from eve_ms.eval.question import (
    DataFormatError, Question, check_unique_ids, read_jsonl, read_table, require_keys, require_path,
)
from eve_ms.eval.subjects import CEVAL_SUBJECTS, CMMLU_SUBJECTS, MMLU_SUBJECTS

LETTERS = ("A", "B", "C", "D")


# ---- subject benchmarks: MMLU, C-Eval, CMMLU -------------------------------------------------

def _split_folder(data_path: str, split: str) -> str:
    folder = os.path.join(data_path, split)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{data_path}: no {split}{os.sep} folder (expected the benchmark's release folder)")
    return folder


def _subject_rows(path: str, header: bool, columns: int | None, answer: str | int) -> list[dict[str, str]]:
    """Rows of one subject's csv as dicts: keyed by its header, or (no header) by position."""
    rows = read_table(path, delimiter=",", header=False)
    if header:
        if not rows:
            raise DataFormatError(f"{path}: empty file, expected a header row")
        names, rows, first = [name.strip() for name in rows[0]], rows[1:], 2
    else:
        names, first = list(range(columns)), 1
    columns = columns or len(names)
    for number, row in enumerate(rows, first):
        if len(row) != columns:
            raise DataFormatError(f"{path}:{number}: {len(row)} columns, expected {columns}")
    table = [dict(zip(names, row)) for row in rows]
    if answer not in names:
        raise DataFormatError(f"{path}: no {answer!r} column in {names}")
    for number, row in enumerate(table, first):
        if row[answer].strip() not in LETTERS:
            raise DataFormatError(f"{path}:{number}: answer {row[answer]!r} is not one of {LETTERS}")
    return table


def _mmlu_entries(path: str) -> list[dict[str, str]]:
    """`MMLUDataset`: no header, 6 columns keyed input, A-D, target."""
    keys = ("input", "A", "B", "C", "D", "target")
    return [{k: row[i] for i, k in enumerate(keys)} for row in _subject_rows(path, False, 6, 5)]


def _ceval_entries(path: str) -> list[dict[str, str]]:
    """`CEvalDataset`: keyed by the csv header (id, question, A-D, answer, explanation)."""
    entries = _subject_rows(path, True, None, "answer")
    missing = [k for k in ("question", "A", "B", "C", "D") if entries and k not in entries[0]]
    if missing:
        raise DataFormatError(f"{path}: the header lacks {missing}")
    return entries


def _cmmlu_entries(path: str) -> list[dict[str, str]]:
    """`CMMLUDataset`: header skipped, 7 columns, columns 1-6 keyed question, A-D, answer."""
    keys = ("question", "A", "B", "C", "D", "answer")
    table = read_table(path, delimiter=",", header=False)[1:]
    for number, row in enumerate(table, 2):
        if len(row) != 7:
            raise DataFormatError(f"{path}:{number}: {len(row)} columns, expected 7")
        if row[6].strip() not in LETTERS:
            raise DataFormatError(f"{path}:{number}: answer {row[6]!r} is not one of {LETTERS}")
    return [dict(zip(keys, row[1:])) for row in table]


def _subject_questions(data_path: str, test_split: str, suffix: str, names: dict[str, str], read_entries,
                       gold: str) -> list[Question]:
    """Questions of every subject found under `<data>/<test_split>/`, each with its subject's dev rows."""
    test_folder = _split_folder(data_path, test_split)
    dev_folder = _split_folder(data_path, "dev")
    paths = sorted(glob.glob(os.path.join(test_folder, f"*{suffix.format(split=test_split)}")))
    if not paths:
        raise FileNotFoundError(f"no *{suffix.format(split=test_split)} files in {test_folder}")
    questions = []
    for path in paths:
        subject = os.path.basename(path)[:-len(suffix.format(split=test_split))]
        if subject not in names:
            raise DataFormatError(f"{path}: {subject!r} is not one of the benchmark's {len(names)} subjects")
        dev_path = require_path(os.path.join(dev_folder, subject + suffix.format(split="dev")),
                                f"dev examples of {subject}")
        dev = read_entries(dev_path)
        for number, entry in enumerate(read_entries(path)):
            questions.append(Question(
                id=f"{subject}/{number}", answer=LETTERS.index(entry[gold].strip()),
                fields={"subject": subject, "subject_name": names[subject], "entry": entry, "dev": dev},
            ))
    return check_unique_ids(questions, data_path)


def load_mmlu(data_path: str, image_folder: str | None = None) -> list[Question]:
    names = {s: s.replace("_", " ") for s in MMLU_SUBJECTS}
    return _subject_questions(data_path, "test", "_{split}.csv", names, _mmlu_entries, "target")


def load_ceval(data_path: str, image_folder: str | None = None) -> list[Question]:
    return _subject_questions(data_path, "val", "_{split}.csv", CEVAL_SUBJECTS, _ceval_entries, "answer")


def load_cmmlu(data_path: str, image_folder: str | None = None) -> list[Question]:
    return _subject_questions(data_path, "test", ".csv", CMMLU_SUBJECTS, _cmmlu_entries, "answer")


SUBJECT_LISTS = {"mmlu": MMLU_SUBJECTS, "ceval": tuple(CEVAL_SUBJECTS), "cmmlu": tuple(CMMLU_SUBJECTS)}


# ---- sentence benchmarks: BoolQ, AX-b, PIQA, EPRSTMT -----------------------------------------

def _label(record: dict, values: dict, where: str):
    if "label" not in record:
        raise DataFormatError(f"{where}: no 'label'")
    value = record["label"]
    value = value.strip() if isinstance(value, str) else value
    if value not in values:
        raise DataFormatError(f"{where}: label {value!r} is not one of {list(values)}")
    return values[value]


def _sentence_questions(data_path: str, keys: tuple[str, ...], labels: dict, id_key: str) -> list[Question]:
    questions = []
    for number, record in enumerate(read_jsonl(data_path)):
        where = f"{data_path}: record {number}"
        require_keys(record, keys, where)
        questions.append(Question(id=str(record.get(id_key, number)), answer=_label(record, labels, where),
                                  fields={"entry": {k: record[k] for k in keys}}))
    return check_unique_ids(questions, data_path)


def load_boolq(data_path: str, image_folder: str | None = None) -> list[Question]:
    # OpenCompass's BoolQDataset: label "true" -> 1, anything else -> 0; SuperGLUE writes JSON booleans
    labels = {True: 1, False: 0, "true": 1, "false": 0}
    return _sentence_questions(data_path, ("question", "passage"), labels, "idx")


def load_axb(data_path: str, image_folder: str | None = None) -> list[Question]:
    return _sentence_questions(data_path, ("sentence1", "sentence2"), {"entailment": 0, "not_entailment": 1}, "idx")


def load_eprstmt(data_path: str, image_folder: str | None = None) -> list[Question]:
    return _sentence_questions(data_path, ("sentence",), {"Negative": 0, "Positive": 1}, "id")


def load_piqa(data_path: str, image_folder: str | None = None) -> list[Question]:
    records = read_jsonl(data_path)
    labels_path = os.path.splitext(data_path)[0] + "-labels.lst"
    if records and "label" not in records[0]:
        with open(require_path(labels_path, f"PIQA labels of {data_path}"), encoding="utf-8") as f:
            labels = [line.strip() for line in f if line.strip()]
        if len(labels) != len(records):
            raise DataFormatError(f"{labels_path}: {len(labels)} labels for {len(records)} questions in {data_path}")
        records = [{**r, "label": int(l)} for r, l in zip(records, labels)]
    questions = []
    for number, record in enumerate(records):
        where = f"{data_path}: record {number}"
        require_keys(record, ("goal", "sol1", "sol2"), where)
        questions.append(Question(id=str(record.get("id", number)), answer=_label(record, {0: 0, 1: 1}, where),
                                  fields={"entry": {k: record[k] for k in ("goal", "sol1", "sol2")}}))
    return check_unique_ids(questions, data_path)
