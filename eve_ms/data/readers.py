"""Streaming readers for LLaVA-format JSON lists and JSONL files, and a byte-offset index.

A 665k-sample file is read once, record by record, to build a `RecordIndex` (byte offset, size,
line and modality of every usable record: a few bytes each); afterwards any record is read back
on its own with one `os.pread`, so no process ever holds all samples in memory. Malformed JSON
is reported with its line and column.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
from array import array
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Union

import numpy as np

from eve_ms.data.report import (
    BadSampleError,
    DataError,
    InvalidUTF8Error,
    MalformedJSONError,
    MissingDataError,
    SkipReport,
)

INDEX_FORMAT = 1  # bump when the index's meaning changes, so old cache files are not reused
CHUNK_BYTES = 1 << 20
MAX_RECORD_BYTES = 64 << 20  # a "record" larger than this is malformed JSON, not a sample
_WHITESPACE = " \t\r\n"
_SKIP_WHITESPACE = re.compile(r"[ \t\r\n]*")
_decoder = json.JSONDecoder()


@dataclass
class RawRecord:
    """One top-level value of the file and where it is."""

    value: object
    offset: int  # byte offset in the file
    size: int  # bytes
    line: int  # 1-based line where it starts


def _file_kind(path: str) -> str:
    """'array' for a JSON list, 'lines' for JSONL (also a .json file holding one object per line)."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf" + _WHITESPACE.encode())
    if head.startswith(b"["):
        return "array"
    if head.startswith(b"{") or not head:
        return "lines"
    raise MalformedJSONError(path, 1, 1, "expected a JSON list '[...]' or JSON lines of objects")


def iter_raw_records(path: str) -> Iterator[Union[RawRecord, MalformedJSONError]]:
    """Yield every top-level record of a JSON list or JSONL file, streaming.

    A malformed or non-UTF-8 JSONL line is yielded as a `MalformedJSONError` / `InvalidUTF8Error`
    (the caller may skip it and go on); either inside a JSON list is raised, since nothing after
    it can be trusted.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "not found"
        raise MissingDataError(f"data file {what}: {path}")
    if _file_kind(path) == "array":
        yield from _iter_array(path)
    else:
        yield from _iter_lines(path)


def _iter_lines(path: str) -> Iterator[Union[RawRecord, MalformedJSONError]]:
    offset = 0
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            size = len(raw)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield InvalidUTF8Error(path, line_no, err.start + 1, offset + err.start, raw[err.start:err.end])
                offset += size
                continue
            if line_no == 1:
                text = text.lstrip("\ufeff")
            if text.strip():
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as err:
                    yield MalformedJSONError(path, line_no, err.colno, err.msg)
                else:
                    yield RawRecord(value, offset, size, line_no)
            offset += size


class _ArrayScanner:
    """Incremental parser of one top-level JSON list, keeping byte offsets and line/column."""

    def __init__(self, path: str, fh):
        self.path, self.fh = path, fh
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.eof = "", False
        self.bytes_read = 0
        self.records = 0  # list elements decoded so far
        self.bad_utf8 = None  # (byte offset, bad bytes): the text ends there
        self.pos = 0  # current char position in buf
        # Marks: byte offset, line and column of buf[pos] (updated by `advance`).
        self.byte, self.line, self.col = 0, 1, 1

    def fill(self, min_chars: int = 1) -> bool:
        """Read until at least `min_chars` unconsumed chars are buffered; False at end of file."""
        while len(self.buf) - self.pos < min_chars and not self.eof:
            chunk = self.fh.read(CHUNK_BYTES)
            self.eof = not chunk
            try:
                text = self.utf8.decode(chunk, final=self.eof)
            except UnicodeDecodeError as err:
                # Keep the text before the bad bytes; parsing stops there with an error naming the element.
                start = self.bytes_read - (len(err.object) - len(chunk)) + err.start
                self.bad_utf8 = (start, err.object[err.start:err.end])
                text, self.eof = err.object[:err.start].decode("utf-8"), True
            self.bytes_read += len(chunk)
            self.buf = self.buf[self.pos:] + text
            self.pos = 0
        return len(self.buf) - self.pos >= min_chars

    def advance(self, n: int) -> None:
        text = self.buf[self.pos:self.pos + n]
        self.byte += len(text.encode("utf-8"))
        newlines = text.count("\n")
        if newlines:
            self.line += newlines
            self.col = n - text.rfind("\n")
        else:
            self.col += n
        self.pos += n

    def skip_whitespace(self) -> Optional[str]:
        """Skip whitespace; the next char (not consumed), or None at end of file."""
        while self.fill():
            end = _SKIP_WHITESPACE.match(self.buf, self.pos).end()
            if end > self.pos:
                self.advance(end - self.pos)
            if end < len(self.buf):
                return self.buf[end]
        return None

    def error(self, detail: str, at: int = 0) -> MalformedJSONError:
        """Error at `at` chars after the current position (the bad bytes, when the text ended at them)."""
        if self.bad_utf8 is not None:
            at = len(self.buf) - self.pos
        text = self.buf[self.pos:self.pos + at]
        newlines = text.count("\n")
        line = self.line + newlines
        col = at - text.rfind("\n") if newlines else self.col + at
        if self.bad_utf8 is not None:
            return InvalidUTF8Error(self.path, line, col, *self.bad_utf8, record=self.records)
        return MalformedJSONError(self.path, line, col, detail)

    def decode_value(self) -> RawRecord:
        want = CHUNK_BYTES
        while True:
            try:
                value, end = _decoder.raw_decode(self.buf, self.pos)
                # A number or literal ending exactly at the buffer's end may continue in the next chunk.
                if end < len(self.buf) or self.eof:
                    break
                raise json.JSONDecodeError("value reaches end of buffer", self.buf, end)
            except json.JSONDecodeError as err:
                if self.eof or len(self.buf) - self.pos > MAX_RECORD_BYTES:
                    raise self.error(err.msg, err.pos - self.pos) from None
                want *= 2
                self.fill(len(self.buf) - self.pos + want)
        record = RawRecord(value, self.byte, 0, self.line)
        start = self.byte
        self.advance(end - self.pos)
        record.size = self.byte - start
        self.records += 1
        return record


def _iter_array(path: str) -> Iterator[RawRecord]:
    with open(path, "rb") as fh:
        scan = _ArrayScanner(path, fh)
        if scan.fill() and scan.buf[0] == "\ufeff":
            scan.pos = 1
            scan.byte = 3
        scan.skip_whitespace()
        scan.advance(1)  # the '[' checked by _file_kind
        ch = scan.skip_whitespace()
        if ch == "]":
            return
        while True:
            if ch is None:
                raise scan.error("file ends inside the list (missing ']')")
            yield scan.decode_value()
            ch = scan.skip_whitespace()
            if ch == "]":
                scan.advance(1)
                break
            if ch != ",":
                raise scan.error("expected ',' or ']' after a list element" if ch else "file ends inside the list")
            scan.advance(1)
            ch = scan.skip_whitespace()
        if scan.skip_whitespace() is not None:
            raise scan.error("extra data after the closing ']'")


def sample_id(value: object, fallback: str) -> str:
    """The record's `id`, or `fallback` (its position) when it has none."""
    if isinstance(value, dict) and "id" in value:
        return str(value["id"])
    return fallback


@dataclass
class RecordIndex:
    """Byte offsets of the usable records of one file (records failing validation are left out)."""

    path: str
    offsets: np.ndarray  # int64 [N]
    sizes: np.ndarray  # int64 [N]
    lines: np.ndarray  # int64 [N], 1-based line of the record's start
    has_image: np.ndarray  # bool [N]
    report: SkipReport  # what was left out, and why

    def __len__(self) -> int:
        return len(self.offsets)


def build_index(
    path: str,
    validate: Callable[[object], bool],
    skip_bad_samples: bool = True,
    max_reported_ids: int = 5,
) -> RecordIndex:
    """Scan `path` once; `validate(record) -> has_image` raises `BadSampleError` for a bad record.

    With `skip_bad_samples` bad records (and malformed JSONL lines) are counted in the index's
    report and left out; without it the first one raises, naming the file and the sample id.
    """
    path = os.fspath(path)
    offsets, sizes, lines, has_image = array("q"), array("q"), array("q"), array("b")
    report = SkipReport(max_ids=max_reported_ids)
    for item in iter_raw_records(path):
        if isinstance(item, MalformedJSONError):
            if not skip_bad_samples:
                raise item
            report.add(item.reason, f"line {item.line}")
            continue
        try:
            image = validate(item.value)
        except BadSampleError as err:
            name = sample_id(item.value, f"line {item.line}")
            err.locate(path, name, item.line)
            if not skip_bad_samples:
                raise
            report.add(err.reason, name)
            continue
        offsets.append(item.offset)
        sizes.append(item.size)
        lines.append(item.line)
        has_image.append(bool(image))
    return RecordIndex(
        path=path,
        offsets=np.frombuffer(offsets, np.int64).copy(),
        sizes=np.frombuffer(sizes, np.int64).copy(),
        lines=np.frombuffer(lines, np.int64).copy(),
        has_image=np.frombuffer(has_image, np.int8).astype(bool),
        report=report,
    )


def cached_index(
    path: str,
    validate: Callable[[object], bool],
    skip_bad_samples: bool = True,
    max_reported_ids: int = 5,
    cache_dir: str = "",
    key: str = "",
) -> RecordIndex:
    """`build_index`, kept in `cache_dir` (if given) as .npz and reused while the data file is unchanged.

    `key` names what `validate` depends on (e.g. the template). The cache file's name holds a
    hash of the file's absolute path, size and mtime, the key and the options.
    """
    if not cache_dir:
        return build_index(path, validate, skip_bad_samples, max_reported_ids)
    path = os.fspath(path)
    stat = os.stat(path)
    fingerprint = [INDEX_FORMAT, os.path.abspath(path), stat.st_size, stat.st_mtime_ns, key, skip_bad_samples,
                   max_reported_ids]
    digest = hashlib.sha1(json.dumps(fingerprint).encode()).hexdigest()[:16]
    cache_file = os.path.join(cache_dir, f"{os.path.basename(path)}.{digest}.index.npz")
    if os.path.isfile(cache_file):
        with np.load(cache_file) as saved:
            report = SkipReport(max_ids=max_reported_ids)
            report.load_state_dict(json.loads(str(saved["report"])))
            return RecordIndex(path, saved["offsets"], saved["sizes"], saved["lines"], saved["has_image"], report)
    index = build_index(path, validate, skip_bad_samples, max_reported_ids)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{cache_file}.tmp{os.getpid()}.npz"
    np.savez(tmp, offsets=index.offsets, sizes=index.sizes, lines=index.lines, has_image=index.has_image,
             report=np.array(json.dumps(index.report.state_dict())))
    os.replace(tmp, cache_file)  # atomic: ranks building at the same time do not see half a file
    return index


class RecordReader:
    """Random access to the records of a `RecordIndex`; safe to use after fork (one fd per process)."""

    def __init__(self, index: RecordIndex):
        self.index = index
        self._fd, self._pid = None, None

    def _file(self) -> int:
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.index.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, i: int) -> object:
        offset, size = int(self.index.offsets[i]), int(self.index.sizes[i])
        raw = os.pread(self._file(), size, offset)
        try:
            if len(raw) != size:
                raise ValueError("cut short")
            return json.loads(raw.decode("utf-8"))
        except ValueError:  # the index checked this record: the file was changed after indexing
            raise DataError(f"{self.index.path} changed while in use: the record at line {self.index.lines[i]} "
                            f"(byte {offset}) no longer reads back; restart the run") from None

    def __getstate__(self):
        return {"index": self.index, "_fd": None, "_pid": None}

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
