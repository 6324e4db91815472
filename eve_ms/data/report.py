"""Bad input: the errors raised for it and the `SkipReport` that counts what was skipped or changed.

Every problem has a code. A *skip* code means the sample was left out; a *note* code means the
sample was kept but changed (truncated, a leading gpt turn dropped, ...). Nothing is dropped
without being counted here, and the loader prints the report at the end of every epoch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from eve_ms.errors import EXIT_USAGE, EveError

# code -> what it means (shown in reports)
SKIP_REASONS = {
    "malformed_json": "JSONL line that is not valid JSON",
    "invalid_utf8": "JSONL line that is not valid UTF-8",
    "not_an_object": "record is not a JSON object",
    "missing_conversations": "no `conversations` list (or an empty one)",
    "bad_turn": "turn is not an object with string `from` and `value`",
    "bad_role": "role other than human/gpt",
    "bad_turn_order": "turns do not alternate human, gpt",
    "template_mismatch": "conversation shape the template cannot express",
    "bad_image_field": "`image` is not a path string (or a list of one)",
    "too_many_images": "more than one image (one per sample is supported)",
    "too_many_image_tags": "more <image> tags than images",
    "image_tag_in_reply": "<image> tag in a gpt turn",
    "missing_image": "image file not found",
    "image_decode_error": "image file that does not decode",
    "image_tokens_do_not_fit": "image tokens do not fit in max_length",
    "no_labels": "no assistant token left to learn from (after truncation)",
}
NOTES = {
    "truncated": "longer than max_length: text cut at the end",
    "leading_gpt_turn_dropped": "conversation started with a gpt turn, dropped as LLaVA does",
    "image_tag_added": "image without an <image> tag: placed at the start of the first human turn",
    "replaced": "batch slot of a skipped sample filled with the next good sample of the same modality",
}
CODES = tuple(SKIP_REASONS) + tuple(NOTES)
CODE_INDEX = {code: i for i, code in enumerate(CODES)}


class DataError(EveError, ValueError):
    """Input data that cannot be used; the message names the file and the sample."""


class MissingDataError(DataError):
    """A data file or image folder the config names is not there."""

    exit_code = EXIT_USAGE


class MalformedJSONError(DataError):
    reason = "malformed_json"  # its SKIP_REASONS code when a JSONL line is skipped

    def __init__(self, path: str, line: int, column: int, detail: str):
        self.path, self.line, self.column, self.detail = path, line, column, detail
        super().__init__(f"{path}: malformed JSON at line {line}, column {column}: {detail}")

    def __reduce__(self):  # picklable across worker processes
        return (MalformedJSONError, (self.path, self.line, self.column, self.detail))


class InvalidUTF8Error(MalformedJSONError):
    """Bytes that are not UTF-8: named by file, line, column and byte offset (and the list element in a JSON list)."""

    reason = "invalid_utf8"

    def __init__(self, path: str, line: int, column: int, offset: int, bad: bytes, record: int = -1):
        self.path, self.line, self.column, self.offset, self.bad, self.record = path, line, column, offset, bad, record
        self.detail = f"invalid UTF-8 byte {bad.hex(' ')} at byte offset {offset}"
        where = f"line {line}, column {column}" + (f", in list element {record + 1}" if record >= 0 else "")
        DataError.__init__(self, f"{path}: {self.detail} ({where}); save the file as UTF-8")

    def __reduce__(self):
        return (InvalidUTF8Error, (self.path, self.line, self.column, self.offset, self.bad, self.record))


class BadSampleError(DataError):
    """One sample that cannot be used: `reason` is a key of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str, path: str = "", sample_id: str = "", line: int = 0):
        assert reason in SKIP_REASONS, reason
        self.reason, self.detail, self.path, self.sample_id, self.line = reason, detail, path, sample_id, line
        super().__init__(self._message())

    def __reduce__(self):  # picklable across worker processes
        return (BadSampleError, (self.reason, self.detail, self.path, self.sample_id, self.line))

    def _message(self) -> str:
        where = f"{self.path}: " if self.path else ""
        if self.sample_id and not self.sample_id.startswith("line "):
            where += f"sample id {self.sample_id!r}" + (f" (line {self.line})" if self.line else "") + ": "
        elif self.line:
            where += f"sample at line {self.line}: "
        hint = getattr(self, "hint", "")
        return f"{where}{self.reason}: {self.detail}" + (f"; {hint}" if hint else "")

    def with_hint(self, hint: str) -> "BadSampleError":
        """Add what the user can do about it to the message."""
        self.hint = hint
        self.args = (self._message(),)
        return self

    def locate(self, path: str, sample_id: str, line: int) -> "BadSampleError":
        """Name the file, the sample's id and the line where its record starts."""
        self.path, self.sample_id, self.line = path, sample_id, line
        self.args = (self._message(),)
        return self


@dataclass
class SkipReport:
    """Counts per code and the first few sample references (ids or line numbers) per code."""

    max_ids: int = 5
    counts: dict = field(default_factory=dict)
    refs: dict = field(default_factory=dict)

    def add(self, code: str, ref: str, count: int = 1) -> None:
        assert code in CODE_INDEX, code
        self.counts[code] = self.counts.get(code, 0) + count
        refs = self.refs.setdefault(code, [])
        if ref and len(refs) < self.max_ids and ref not in refs:
            refs.append(ref)

    def merge(self, other: "SkipReport") -> None:
        for code, n in other.counts.items():
            refs = other.refs.get(code) or [""]
            for i, ref in enumerate(refs):
                self.add(code, ref, count=n if i == 0 else 0)

    @property
    def num_skipped(self) -> int:
        return sum(n for code, n in self.counts.items() if code in SKIP_REASONS)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def format(self, title: str = "data report") -> str:
        if not self.counts:
            return f"{title}: no bad samples"
        lines = [f"{title}: {self.num_skipped} samples skipped"]
        for code in CODES:
            if code in self.counts:
                kind = "skipped" if code in SKIP_REASONS else "note"
                meaning = SKIP_REASONS.get(code) or NOTES[code]
                refs = ", ".join(r for r in self.refs.get(code, []) if r)
                more = " ..." if self.counts[code] > len(self.refs.get(code, [])) else ""
                lines.append(f"  {kind:7s} {code}: {self.counts[code]} ({meaning})" + (f": {refs}{more}" if refs else ""))
        return "\n".join(lines)

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "refs": {k: list(v) for k, v in self.refs.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.counts = dict(state["counts"])
        self.refs = {k: list(v) for k, v in state["refs"].items()}


class BatchEvents:
    """Problems met while building one batch, as fixed-shape arrays that can travel as dataset columns.

    counts[c] = how often code c happened; records[c] = the first few record indices for code c
    (-1 = unused). The main process turns record indices into sample ids (`to_report`).
    """

    def __init__(self, max_ids: int):
        self.counts = np.zeros(len(CODES), np.int32)
        self.records = np.full((len(CODES), max_ids), -1, np.int32)

    def add(self, code: str, record: int) -> None:
        c = CODE_INDEX[code]
        filled = int((self.records[c] >= 0).sum())
        if filled < self.records.shape[1] and record not in self.records[c, :filled]:
            self.records[c, filled] = record
        self.counts[c] += 1

    @staticmethod
    def to_report(counts: np.ndarray, records: np.ndarray, describe, max_ids: int) -> SkipReport:
        """`describe(record_index) -> str` names a record (its id)."""
        report = SkipReport(max_ids=max_ids)
        for c in np.flatnonzero(counts):
            refs = [describe(int(r)) for r in records[c] if r >= 0] or [""]
            for i, ref in enumerate(refs):
                report.add(CODES[c], ref, count=int(counts[c]) if i == 0 else 0)
        return report
