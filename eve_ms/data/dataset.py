"""Batches for training: a plain-Python iterator and a MindSpore `GeneratorDataset`, giving the same batches.

A batch is a dict of numpy arrays:
  input_ids      int32   [B, L]  right-padded with the tokenizer's pad id
  labels         int32   [B, L]  IGNORE_INDEX except assistant tokens
  attention_mask int32   [B, L]  1 real token, 0 padding
  pixel_values   float32 [B, 3, H, W]  zeros for text-only samples
  has_image      int32   [B]
L is the smallest length bucket (DataConfig.buckets, max_length last) the batch's longest sample fits.

Bad samples: with `skip_bad_samples`, a bad record's slot is filled with the next good record of
the same modality (so shapes and modality grouping hold) and counted; the report is printed as
soon as an epoch's last batch is built (`take_reports()` hands it to the trainer's log) and, for
an epoch a run leaves unfinished, by `finish_report()`. Without it, the first bad record raises a
`DataError` naming file, line and id. An error in a decoding worker process reaches the main
process with its own message (`_worker_error` / `_reraise_worker_error`).

Data position: `state_dict()` = {"epoch", "samples_seen", ...}, where samples_seen counts the
samples of the epoch's global order handed out on all ranks together (micro-batches handed out
on this rank x micro batch x world size). It is the same on every rank and for every split of
the global batch, so rank 0 saves it for all and a run may resume with another world size /
accumulation split of the same global batch. After `load_state_dict(state)` iteration continues
with exactly the next batch. The skip report is per rank and not part of the position: after a
resume in mid-epoch it covers the batches from there on and says so. Typical loop:

    loader = build_loader(data_config, eve_config, tokenizer, rank, world_size, accumulation_steps)
    loader.load_state_dict(checkpoint["data"])        # optional resume
    while loader.epoch < num_epochs:
        for batch in loader:                          # the rest of the current epoch
            ...; checkpoint["data"] = loader.state_dict()
"""
from __future__ import annotations

import os
import re
import time
from typing import Callable, Iterator, Optional

import numpy as np

from eve_ms.config import IGNORE_INDEX
from eve_ms.data.config import DataConfig
from eve_ms.data.images import ImageProcessor
from eve_ms.data.readers import RecordIndex, RecordReader, cached_index, sample_id
from eve_ms.data.report import BadSampleError, BatchEvents, DataError, MissingDataError, SkipReport
from eve_ms.data.sampler import BatchPlan
from eve_ms.data.samples import EncodedSample, SampleEncoder
from eve_ms.data.templates import get_template

NO_SKIP_HINT = ("data.skip_bad_samples is false: fix the sample, or set it to true to skip bad samples and count "
                "them in the data report")
BATCH_KEYS = ("input_ids", "labels", "attention_mask", "pixel_values", "has_image")
REPORT_KEYS = ("report_counts", "report_records")  # BatchEvents, travel with the batch from workers


class BatchBuilder:
    """Record indices -> one padded batch (plus its BatchEvents). Picklable; runs in decoding workers."""

    def __init__(self, config: DataConfig, index: RecordIndex, plan: BatchPlan, encoder: SampleEncoder):
        self.config, self.index, self.plan, self.encoder = config, index, plan, encoder
        self.reader = RecordReader(index)
        self.pad_id = encoder.ids.pad
        self.known_bad: dict = {}  # record -> reason, so a bad image is decoded once per process

    def describe(self, record: int) -> str:
        """A record's sample id (its line when it has none)."""
        return sample_id(self.reader.read(record), f"line {self.index.lines[record]}")

    def sample(self, record: int) -> EncodedSample:
        value = self.reader.read(record)
        line = int(self.index.lines[record])
        name = sample_id(value, f"line {line}")
        if record in self.known_bad:
            raise BadSampleError(self.known_bad[record], "seen before").locate(self.index.path, name, line)
        try:
            return self.encoder.encode(value)
        except BadSampleError as err:
            self.known_bad[record] = err.reason
            raise err.locate(self.index.path, name, line)

    def _good_sample(self, record: int, events: BatchEvents) -> tuple[int, EncodedSample]:
        """(record used, its sample): `record` itself, or the replacement of a bad one."""
        try:
            return record, self.sample(record)
        except BadSampleError as err:
            if not self.config.skip_bad_samples:
                raise err.with_hint(NO_SKIP_HINT)
            events.add(err.reason, record)
        for other in self.plan.replacements(record):
            try:
                sample = self.sample(other)
            except BadSampleError:
                continue  # counted where `other` itself is scheduled
            events.add("replaced", record)
            return other, sample
        modality = "with an image" if self.index.has_image[record] else "text-only"
        seen: dict = {}
        for reason in self.known_bad.values():
            seen[reason] = seen.get(reason, 0) + 1
        reasons = ", ".join(f"{reason} x{n}" for reason, n in sorted(seen.items()))
        raise DataError(f"{self.index.path}: no usable sample {modality} is left to fill a batch; the bad ones so far: "
                        f"{reasons} (run `eve-ms data check` on the file for every problem)")

    def __call__(self, records: np.ndarray) -> dict:
        events = BatchEvents(self.config.max_reported_ids)
        samples = []
        for record in records:
            used, sample = self._good_sample(int(record), events)
            samples.append(sample)
            for note in sample.notes:
                events.add(note, used)
        longest = max(len(s.input_ids) for s in samples)
        length = next(b for b in self.config.buckets if b >= longest)
        size = len(samples)
        input_ids = np.full((size, length), self.pad_id, np.int32)
        labels = np.full((size, length), IGNORE_INDEX, np.int32)
        attention_mask = np.zeros((size, length), np.int32)
        pixel_values = np.zeros((size,) + self.encoder.image_processor.shape, np.float32)
        has_image = np.zeros(size, np.int32)
        for row, sample in enumerate(samples):
            n = len(sample.input_ids)
            input_ids[row, :n] = sample.input_ids
            labels[row, :n] = sample.labels
            attention_mask[row, :n] = 1
            if sample.pixel_values is not None:
                pixel_values[row] = sample.pixel_values
                has_image[row] = 1
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values,
            "has_image": has_image,
            "report_counts": events.counts,
            "report_records": events.records,
        }


class _BatchSource:
    """Random-access source for GeneratorDataset: item i = batch i of a fixed list of record batches."""

    def __init__(self, builder: BatchBuilder, batches: np.ndarray):
        self.builder, self.batches = builder, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple:
        try:
            batch = self.builder(self.batches[i])
        except Exception as err:  # noqa: BLE001 - every error travels to the main process, message intact
            raise DataError(_worker_error(err)) from None
        return tuple(batch[k] for k in BATCH_KEYS + REPORT_KEYS)


# MindSpore re-raises a worker's exception in the main process as a RuntimeError whose message is the
# worker's whole traceback (and, on the way, as type(err)(message), which fails for most types): the
# worker wraps the error's kind and message between markers and the main process takes them back out.
_WORKER_ERROR = re.compile(r"<<eve-ms (\w+)>>(.*?)<</eve-ms>>", re.S)


def _worker_error(err: Exception) -> str:
    kind = "missing" if isinstance(err, MissingDataError) else "data" if isinstance(err, DataError) else "other"
    message = str(err) if kind != "other" else f"{type(err).__name__}: {err}"
    return f"<<eve-ms {kind}>>{message}<</eve-ms>>"


def _reraise_worker_error(err: Exception) -> None:
    """Raise the error a decoding worker met, as the error type and message it had; return if `err` is not one."""
    match = _WORKER_ERROR.search(str(err))
    if match is None:
        return
    kind, message = match.groups()
    if kind == "missing":
        raise MissingDataError(message) from None
    if kind == "data":
        raise DataError(message) from None
    raise RuntimeError(f"a data worker failed: {message}") from None


class LlavaLoader:
    """Deterministic, resumable, rank-sharded batches of one LLaVA-format data set (see module docstring)."""

    def __init__(
        self,
        config: DataConfig,
        tokenizer,
        image_processor: ImageProcessor,
        num_image_tokens: int,
        rank: int = 0,
        world_size: int = 1,
        accumulation_steps: int = 1,
        batch_size: Optional[int] = None,
        log: Callable[[str], None] = print,
    ):
        """`batch_size` (micro batch per rank) overrides `config.batch_size`, for a trainer that owns that number."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.config, self.rank, self.world_size, self.log = config, rank, world_size, log
        self.batch_size = config.batch_size if batch_size is None else batch_size
        encoder = SampleEncoder(
            get_template(config.template),
            tokenizer,
            num_image_tokens=num_image_tokens,
            max_length=config.max_length,
            image_processor=image_processor,
            image_folder=config.image_folder,
            add_bos=config.add_bos,
        )
        try:
            self.index = cached_index(config.data_path, encoder.validate, config.skip_bad_samples,
                                      config.max_reported_ids, config.index_cache_dir,
                                      key=f"template={config.template}")
        except BadSampleError as err:
            raise err.with_hint(NO_SKIP_HINT)
        if not len(self.index):
            if not self.index.report:
                raise DataError(f"{config.data_path} holds no record (an empty file or an empty list): "
                                "no usable samples to train on")
            raise DataError(f"{config.data_path}: no usable samples\n{self.index.report.format('index')}")
        if self.index.has_image.any() and config.image_folder and not os.path.isdir(config.image_folder):
            raise MissingDataError(
                f"data.image_folder not found: {config.image_folder} ({int(self.index.has_image.sum())} samples of "
                f"{config.data_path} have an image there)"
            )
        self.plan = BatchPlan(
            self.index.has_image,
            batch_size=self.batch_size,
            world_size=world_size,
            accumulation_steps=accumulation_steps,
            seed=config.seed,
            shuffle=config.shuffle,
            group_by_modality=config.group_by_modality,
            drop_last=config.drop_last,
        )
        if self.plan.steps_per_epoch == 0:
            raise DataError(
                f"{config.data_path}: {len(self.index)} usable samples are fewer than one global batch "
                f"({self.plan.global_batch_size}) and drop_last is set"
            )
        self.builder = BatchBuilder(config, self.index, self.plan, encoder)
        self.epoch, self.step = 0, 0
        self.report = self._new_report()
        self.report_from_step = 0  # the current report covers this epoch's micro-batches from here
        self.last_report: Optional[SkipReport] = None
        self._reported = False  # the current report has been printed (the epoch's last batch is built)
        self._pending: list = []  # reports printed but not yet taken by `take_reports`

    # ----------------------------------------------------------------- position

    def _new_report(self) -> SkipReport:
        """An epoch's report starts with what indexing left out (it is missing from every epoch)."""
        report = SkipReport(max_ids=self.config.max_reported_ids)
        report.merge(self.index.report)
        return report

    @property
    def steps_per_epoch(self) -> int:
        """Micro-batches per epoch on this rank (the same on every rank)."""
        return self.plan.steps_per_epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def state_dict(self) -> dict:
        """The data position (plain JSON types), identical on every rank."""
        return {
            "epoch": self.epoch,
            "samples_seen": self.step * self.plan.samples_per_micro_step,
            "global_batch": self.plan.global_batch_size,
            "seed": self.config.seed,
            "num_records": len(self.index),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at a saved data position; the order it was saved with must be reproducible."""
        for key, mine in (
            ("seed", self.config.seed),
            ("global_batch", self.plan.global_batch_size),
            ("num_records", len(self.index)),
        ):
            if state[key] != mine:
                raise DataError(f"cannot resume the data position: saved {key}={state[key]}, now {mine}")
        step, rest = divmod(int(state["samples_seen"]), self.plan.samples_per_micro_step)
        if rest or not 0 <= step <= self.steps_per_epoch:
            raise DataError(
                f"cannot resume at sample {state['samples_seen']} of the epoch: not a micro-step boundary of "
                f"{self.plan.samples_per_micro_step} samples within {self.steps_per_epoch} micro-batches"
            )
        self.epoch, self.step = int(state["epoch"]), step
        self.report, self.report_from_step = self._new_report(), step
        self._reported = False

    # ----------------------------------------------------------------- iteration

    def record_batches(self, epoch: int) -> np.ndarray:
        """int64 [steps_per_epoch, batch_size]: this rank's record indices, batch by batch."""
        return self.plan.rank_batches(epoch, self.rank)

    def batch_at(self, epoch: int, step: int) -> dict:
        """One batch, built in this process (no report side effects)."""
        return _strip(self.builder(self.record_batches(epoch)[step]))[0]

    def mindspore_dataset(self, epoch: int, start_step: int = 0):
        """GeneratorDataset of the epoch's batches from `start_step`, decoded by `num_workers` processes.

        Columns: BATCH_KEYS then REPORT_KEYS; a caller iterating it itself passes the report
        columns to `absorb_events` so skips are counted.
        """
        import mindspore.dataset as msds

        workers = max(1, self.config.num_workers)
        return msds.GeneratorDataset(
            _BatchSource(self.builder, self.record_batches(epoch)[start_step:]),
            column_names=list(BATCH_KEYS + REPORT_KEYS),
            shuffle=False,
            num_parallel_workers=workers,
            python_multiprocessing=workers > 1,
        )

    def absorb_events(self, counts: np.ndarray, records: np.ndarray) -> None:
        """Add one batch's report columns to the current epoch's report."""
        if counts.any():
            self.report.merge(BatchEvents.to_report(counts, records, self.builder.describe, self.config.max_reported_ids))

    def _raw_batches(self, epoch: int, start_step: int) -> Iterator[dict]:
        if start_step >= self.steps_per_epoch:
            return
        if self.config.backend == "python":
            for records in self.record_batches(epoch)[start_step:]:
                yield self.builder(records)
        else:
            iterator = self.mindspore_dataset(epoch, start_step).create_dict_iterator(output_numpy=True, num_epochs=1)
            try:
                yield from iterator
            except RuntimeError as err:
                _reraise_worker_error(err)
                raise
            finally:  # also when the consumer stops early: end the worker processes
                iterator.stop()

    def __iter__(self) -> Iterator[dict]:
        """The remaining batches of the current epoch; the report is logged with the last, then the epoch advances."""
        epoch = self.epoch
        for raw in self._raw_batches(epoch, self.step):
            batch, counts, records = _strip(raw)
            self.absorb_events(counts, records)
            self.step += 1
            if self.step == self.steps_per_epoch:
                self._emit_report("")  # every skip of the epoch is known now: report before training on it
            yield batch
        if self.epoch == epoch and self.step == self.steps_per_epoch:
            if not self._reported:
                self._emit_report("")
            self.epoch, self.step = epoch + 1, 0
            self.report, self.report_from_step, self._reported = self._new_report(), 0, False

    def _emit_report(self, ending: str) -> dict:
        """Log the current report (once) and queue it for `take_reports`; returns it as a log record."""
        part = f", micro-batches {self.report_from_step}..{self.step - 1}" if self.report_from_step or ending else ""
        self.last_report = self.report
        self.log(self.report.format(f"data report, epoch {self.epoch} (rank {self.rank}{part}{ending})"))
        self._reported = True
        record = {
            "event": "data_report", "epoch": self.epoch, "rank": self.rank,
            "micro_batches": [self.report_from_step, self.step], "complete": not ending,
            "skipped": self.report.num_skipped, **self.report.state_dict(),
        }
        self._pending.append(record)
        return record

    def take_reports(self) -> list[dict]:
        """The data reports printed since the last call (end of an epoch), as log records."""
        reports, self._pending = self._pending, []
        return reports

    def finish_report(self, reason: str = "run ended") -> list[dict]:
        """At the end of a run (stop step, error, interrupt): report the unfinished epoch's part; then `take_reports`."""
        if not self._reported and self.step > self.report_from_step:
            self._emit_report(f", {reason} mid-epoch")
        return self.take_reports()

    def measure_throughput(self, num_batches: int = 8) -> dict:
        """Preprocessing speed of the configured backend: samples/s over `num_batches` from the current position.

        The position and the report are left as they were.
        """
        start = time.perf_counter()
        count = 0
        batches = self._raw_batches(self.epoch, self.step)
        try:
            for count, _ in enumerate(batches, start=1):
                if count == num_batches:
                    break
        finally:
            batches.close()
        seconds = time.perf_counter() - start
        samples = count * self.batch_size
        return {"batches": count, "samples": samples, "seconds": seconds, "samples_per_s": samples / max(seconds, 1e-9)}


def _strip(raw: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    return {k: raw[k] for k in BATCH_KEYS}, raw["report_counts"], raw["report_records"]


def build_loader(
    config: DataConfig,
    eve_config,
    tokenizer=None,
    rank: int = 0,
    world_size: int = 1,
    accumulation_steps: int = 1,
    batch_size: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> LlavaLoader:
    """The loader for a model: image size/mean/std from `eve_config.vision`, image tokens from `eve_config`.

    `tokenizer` None loads `config.tokenizer_path`; `batch_size` None uses `config.batch_size`.
    """
    from eve_ms.data.tokenizer import load_tokenizer

    if tokenizer is None:
        if not config.tokenizer_path:
            raise DataError("no tokenizer: pass one or set data.tokenizer_path")
        tokenizer = load_tokenizer(config.tokenizer_path)
    processor = ImageProcessor.from_vision_config(eve_config.vision, config.image_aspect_ratio)
    return LlavaLoader(
        config, tokenizer, processor, eve_config.num_image_tokens, rank, world_size, accumulation_steps, batch_size, log
    )
