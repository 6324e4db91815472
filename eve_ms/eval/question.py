"""One benchmark question as every loader yields it, and the file readers the loaders share.

A loader turns a benchmark's released files into `Question`s; the benchmark's prompt
builder turns a question into the text the model sees; its scorer compares the model's
responses with `Question.answer`. Readers raise errors that name the file and the line
or key, so a malformed download is never half-read in silence.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable
from eve_ms.errors import EveError

OPTION_LETTERS = "ABCDEFGHIJ"


@dataclass
class Question:
    """A benchmark question.

    `id` is unique within the benchmark and keys the answers JSONL. `fields` holds the
    raw text the prompt builder needs (question, options, hint, ...). `group` is the unit
    that `--limit` keeps whole and that some scorers judge together (an MME image with
    its two questions, an MMBench question with its rotations); None means the question
    alone. Multiple-choice questions keep their record under `fields` and get their candidate
    texts from their benchmark (`Benchmark.candidates`).
    """

    id: str
    answer: Any
    fields: dict[str, Any] = field(default_factory=dict)
    image: str | None = None  # path of the image file
    image_b64: str | None = None  # base64-encoded image, for formats that embed images (MMBench)
    group: str | None = None

    @property
    def unit(self) -> str:
        return self.group if self.group is not None else self.id


class DataFormatError(EveError, ValueError):
    """A benchmark file that does not have the expected format."""


def require_path(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def read_json(path: str) -> Any:
    require_path(path, "benchmark file")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}: not valid JSON ({err})") from None


def read_jsonl(path: str) -> list[dict]:
    """A JSON-lines file (blank lines skipped); falls back to a JSON list in the same file."""
    require_path(path, "benchmark file")
    records = []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = read_json(path)
        records = list(data)
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}:{number}: not valid JSON ({err})") from None
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise DataFormatError(f"{path}: record {number} is {type(record).__name__}, expected an object")
    return records


def read_table(path: str, delimiter: str, header: bool = True) -> list[dict[str, str]] | list[list[str]]:
    """Rows of a csv/tsv file: dicts keyed by the header, or plain lists without one."""
    require_path(path, "benchmark file")
    csv.field_size_limit(sys.maxsize)  # MMBench embeds whole images in one cell
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        rows = [row for row in reader if row]
    if not header:
        return rows
    if not rows:
        raise DataFormatError(f"{path}: empty file, expected a header row")
    names = rows[0]
    table = []
    for number, row in enumerate(rows[1:], 2):
        if len(row) != len(names):
            raise DataFormatError(f"{path}:{number}: {len(row)} columns, the header has {len(names)}")
        table.append(dict(zip(names, row)))
    return table


def require_keys(record: dict, keys: Iterable[str], where: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataFormatError(f"{where}: missing key(s) {missing}; has {sorted(record)}")


def is_blank(value: Any) -> bool:
    """Empty cell as released tables write it: None, '', 'nan', 'none' (pandas-written tsv files)."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    return str(value).strip().lower() in ("", "nan", "none")


def lettered_options(options: list[str]) -> str:
    """"A. first\\nB. second" as LLaVA's multiple-choice prompts list options."""
    return "\n".join(f"{OPTION_LETTERS[i]}. {text}" for i, text in enumerate(options))


def check_unique_ids(questions: list[Question], source: str) -> list[Question]:
    seen = set()
    for q in questions:
        if q.id in seen:
            raise DataFormatError(f"{source}: question id {q.id!r} occurs twice")
        seen.add(q.id)
    return questions
