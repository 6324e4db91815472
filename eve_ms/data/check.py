"""`eve-ms data check DATA.json --image-folder DIR`: validate a whole data set and summarise every problem.

Runs the checks training runs (structure, <image> tags, image files decode, and with
`--tokenizer` the token lengths against `--max-length`) over every record, and exits non-zero
if any record would be skipped. Notes (truncation, a dropped leading gpt turn, ...) are listed
but are not failures.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from typing import Iterator, Optional

from eve_ms.data.images import ImageProcessor
from eve_ms.data.readers import iter_raw_records, sample_id
from eve_ms.data.report import BadSampleError, DataError, MalformedJSONError, SkipReport
from eve_ms.data.samples import SampleEncoder, parse_record
from eve_ms.data.templates import get_template


@dataclass
class CheckResult:
    path: str
    num_records: int = 0
    num_image: int = 0
    num_text: int = 0
    lengths: list = field(default_factory=list)  # token lengths before truncation (with a tokenizer)
    report: SkipReport = field(default_factory=lambda: SkipReport(max_ids=10))
    problems: list = field(default_factory=list)  # one message per unusable record
    fatal: Optional[str] = None  # malformed JSON list: nothing after it could be read
    first_problem: Optional[str] = None  # the message of the first unusable record (kept without keep_details)

    @property
    def num_usable(self) -> int:
        return self.num_records - self.report.num_skipped

    @property
    def ok(self) -> bool:
        return self.fatal is None and self.report.num_skipped == 0 and self.num_usable > 0

    def format(self, verbose: bool = False) -> str:
        lines = [
            f"checked {self.path}: {self.num_records} records "
            f"({self.num_image} with an image, {self.num_text} text-only)"
        ]
        if self.lengths:
            mean = sum(self.lengths) / len(self.lengths)
            lines.append(f"token lengths: longest {max(self.lengths)}, mean {mean:.1f}")
        if self.fatal:
            lines.append(f"FATAL: {self.fatal}")
        elif not self.num_records:
            lines.append(f"FATAL: {self.path} holds no record (an empty file or an empty list): nothing to train on")
        elif not self.num_usable:
            lines.append(f"FATAL: none of the {self.num_records} records of {self.path} is usable")
        lines.append(self.report.format("problems"))
        if verbose:
            lines += [f"  {p}" for p in self.problems]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


_encoder: Optional[SampleEncoder] = None  # per worker process
_decode = True


def _check_one(item) -> tuple:
    """(sample name, has_image, token length or -1, notes, (reason, message) or None) for one RawRecord."""
    value = item.value
    name = sample_id(value, f"line {item.line}")
    has_image, length, notes = isinstance(value, dict) and bool(value.get("image")), -1, []
    try:
        conversation = parse_record(value, _encoder.template)
        has_image, notes = conversation.image is not None, list(conversation.notes)
        if _encoder.tokenizer is not None:
            ids, labels = _encoder.encode_pieces(_encoder.template.render(conversation.turns))
            length = len(ids)
            _encoder.fit(ids, labels, notes)
        if has_image:
            path = _encoder.image_path(conversation.image)
            if _decode:
                _encoder.image_processor.open(path)
            elif not os.path.isfile(path):
                raise BadSampleError("missing_image", f"image file not found: {path}")
    except BadSampleError as err:
        where = name if name.startswith("line ") else f"{name} (line {item.line})"
        return name, has_image, length, notes, (err.reason, f"{where}: {err.reason}: {err.detail}")
    return name, has_image, length, notes, None


def _init_worker(encoder: SampleEncoder, decode: bool) -> None:
    global _encoder, _decode
    _encoder, _decode = encoder, decode


class RecordChecker:
    """The per-record checks of `eve-ms data check`, for another command (`eve-ms data mix`) to reuse.

    `checker(items)` checks a list of RawRecords and returns, in order, (name, has_image, token
    length or -1, notes, (reason, message) or None) per record; with `workers` > 1 in forked
    processes. Use as a context manager (it closes the processes).
    """

    def __init__(self, encoder: SampleEncoder, decode_images: bool = True, workers: int = 1):
        self.encoder, self.decode_images = encoder, decode_images
        self.pool = None
        if workers > 1:
            self.pool = multiprocessing.get_context("fork").Pool(workers, _init_worker, (encoder, decode_images))

    def __call__(self, items: list) -> list:
        if self.pool is not None:
            return self.pool.map(_check_one, items, chunksize=32)
        _init_worker(self.encoder, self.decode_images)  # the module's encoder may be another caller's
        return [_check_one(item) for item in items]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None

    def __enter__(self) -> "RecordChecker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_dataset(
    path: str,
    encoder: SampleEncoder,
    decode_images: bool = True,
    workers: int = 1,
    max_ids: int = 10,
    keep_details: bool = True,
) -> CheckResult:
    """Check every record of `path` with `encoder` (its tokenizer may be None: no length checks).

    `keep_details` keeps one message per bad record in `problems` (memory grows with them).
    """
    result = CheckResult(path, report=SkipReport(max_ids=max_ids))

    def good_records() -> Iterator:
        try:
            for item in iter_raw_records(path):
                if isinstance(item, MalformedJSONError):
                    result.num_records += 1
                    result.report.add(item.reason, f"line {item.line}")
                    result.problems.append(str(item))
                    result.first_problem = result.first_problem or str(item)
                else:
                    yield item
        except DataError as err:  # malformed or non-UTF-8 JSON list, missing file: nothing after it can be read
            result.fatal = str(err)

    _init_worker(encoder, decode_images)
    pool = multiprocessing.get_context("fork").Pool(workers, _init_worker, (encoder, decode_images)) if workers > 1 else None
    stream = good_records()
    try:
        # Bounded slices: Pool.imap would read the whole file ahead into its task queue.
        while chunk := list(itertools.islice(stream, 256 * workers)):
            outcomes = pool.map(_check_one, chunk, chunksize=32) if pool else map(_check_one, chunk)
            for name, has_image, length, notes, problem in outcomes:
                result.num_records += 1
                result.num_image += int(has_image)
                result.num_text += int(not has_image)
                if length >= 0:
                    result.lengths.append(length)
                if problem:
                    result.report.add(problem[0], name)
                    result.first_problem = result.first_problem or f"{path}: {problem[1]}"
                    if keep_details:
                        result.problems.append(problem[1])
                else:
                    for note in notes:
                        result.report.add(note, name)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return result


def add_arguments(p) -> None:
    """The `check` action of `eve-ms data` (the command is `eve_ms.data.command`)."""
    p.add_argument("data_path", help="JSON list or JSONL file of {id, image?, conversations}")
    p.add_argument("--image-folder", default="", help="folder the `image` paths are relative to")
    p.add_argument("--tokenizer", default="", help="tokenizer.json or tokenizer directory: also check lengths")
    p.add_argument("--template", default="v1", help="conversation template (plain, v1)")
    p.add_argument("--max-length", type=int, default=2048, help="longest sequence, image tokens included")
    p.add_argument("--num-image-tokens", type=int, default=None, help="tokens per image (needed with --tokenizer)")
    p.add_argument("--no-decode", action="store_true", help="only check that image files exist")
    p.add_argument("--workers", type=int, default=1, help="processes decoding images")
    p.add_argument("--max-ids", type=int, default=10, help="sample ids listed per problem")
    p.add_argument("-v", "--verbose", action="store_true", help="print every problem with its detail")
    p.set_defaults(_module=__name__)


def run(args) -> int:
    """Errors about the arguments (exit 2) and a data file that cannot be read at all (exit 1) reach the CLI's
    handler as one line; otherwise the report goes to stdout and a failed verdict adds one line on stderr."""
    from eve_ms.data.report import MissingDataError
    from eve_ms.data.tokenizer import load_tokenizer
    from eve_ms.errors import UsageError

    template = get_template(args.template)
    if args.tokenizer and args.num_image_tokens is None:
        raise UsageError("--num-image-tokens is needed with --tokenizer (e.g. 144 for LDP on a 24x24 grid)")
    if not os.path.isfile(args.data_path):
        raise MissingDataError(f"data file not found: {args.data_path}")
    if args.image_folder and not os.path.isdir(args.image_folder):
        raise MissingDataError(f"image folder not found: {args.image_folder} (--image-folder)")
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    # Only decoding is checked here, so the processor's size and statistics do not matter.
    opener = ImageProcessor(image_size=1, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    encoder = SampleEncoder(
        template,
        tokenizer,
        num_image_tokens=args.num_image_tokens or 0,
        max_length=args.max_length,
        image_processor=opener,
        image_folder=args.image_folder,
    )
    result = check_dataset(args.data_path, encoder, not args.no_decode, args.workers, args.max_ids, args.verbose)
    print(result.format(verbose=args.verbose))
    if result.ok:
        return 0
    if result.fatal:
        reason = result.fatal
    elif not result.num_records:
        reason = f"{args.data_path} holds no record"
    else:
        reason = (f"{result.report.num_skipped} of {result.num_records} records would be skipped in training "
                  f"(listed above); the first: {result.first_problem}")
    print(f"eve-ms data check: error: {reason}", file=sys.stderr)
    return 1
