"""What produced an answers file, and the lock that keeps one writer per file.

The first line of an answers JSONL is a header `{"eve_ms_answers": {...}}`: the checkpoint (its
path and the SHA-256 of its weights file), the benchmark, and the prompt and generation settings
that the answers depend on. A run that resumes into an existing file first compares its own
header with the file's: answers made by another checkpoint or other settings are never mixed
into one score; the error names both and the keys that differ, and `--overwrite` starts over.

Two processes appending to one file would interleave and duplicate answers: a writer holds an
exclusive `flock` on `<answers>.lock` (released by the kernel when the process ends, so a
crashed run leaves no stale lock); a second writer stops with an error that names the holder.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from eve_ms.errors import EveError

HEADER_KEY = "eve_ms_answers"
CHUNK = 1 << 24


class AnswersFileError(EveError, RuntimeError):
    """An answers file that this run must not append to (other provenance, or another writer)."""


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def header_line(provenance: dict) -> str:
    return json.dumps({HEADER_KEY: provenance}, ensure_ascii=False, sort_keys=True) + "\n"


def read_header(path: str) -> dict | None:
    """The provenance of an answers file: None when the file is absent or empty; an error without a header."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or HEADER_KEY not in record:
        raise AnswersFileError(f"{path} has no provenance header (written by an older eve-ms or another tool): "
                               "its answers cannot be checked against this run; rerun with --overwrite")
    return record[HEADER_KEY]


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def check_same(path: str, recorded: dict, current: dict) -> None:
    """Stop, naming both, when the file's provenance is not this run's."""
    if recorded == current:
        return
    before, now = _flatten(recorded), _flatten(current)
    differing = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    details = "; ".join(f"{k}: file {before.get(k)!r}, this run {now.get(k)!r}" for k in differing)
    raise AnswersFileError(f"{path} holds answers made otherwise than this run ({details}). "
                           "Use another --output, or --overwrite to start the file over")


class AnswersLock:
    """Exclusive `flock` on `<answers>.lock` for as long as the `with` block runs."""

    def __init__(self, answers_path: str):
        self.path = answers_path + ".lock"
        self._file = None

    def __enter__(self) -> "AnswersLock":
        self._file = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown process"
            self._file.close()
            raise AnswersFileError(f"{self.path[:-len('.lock')]} is being written by another process ({holder}): "
                                   "wait for it to finish, or give this run another --output") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}")
        self._file.flush()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._file.close()
