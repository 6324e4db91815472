"""The model's one worker thread: it owns the generator and runs the waiting requests as batches.

MindSpore cells are not thread-safe, so the HTTP side never touches the model: it `submit`s a
`Job` and hears back through the job's callbacks (called on the worker thread). The worker takes
up to `max_batch` waiting jobs at a time and generates them as one left-padded batch
(`Generator.generate` with one `GenerationConfig` per job: each job samples from a generator
seeded by its own seed, so its tokens are those it would get alone). A job that arrives while a
batch runs waits for the next one. At most `max_queue` jobs wait: `submit` raises `QueueFull`
beyond that (the server answers 503). A cancelled job (its client went away) leaves the queue,
or stops at the next decode step of its batch and stops being sampled; a batch whose jobs are all
cancelled ends there.
"""
from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from eve_ms.inference.sampling import GenerationConfig

log = logging.getLogger("eve_ms.serve")


class QueueFull(RuntimeError):
    """The waiting queue holds `max_queue` jobs already."""


@dataclass(eq=False)  # jobs are compared by identity (the queue's remove), never by their arrays
class Job:
    """One request for the model. The callbacks run on the worker thread."""

    ids: np.ndarray  # prompt token ids (image tokens included)
    pixels: Optional[np.ndarray]  # [3, S, S] or None for a text-only prompt
    config: GenerationConfig
    on_piece: Callable[[str], None]  # each new piece of the reply's text
    on_done: Callable[[object], None]  # the GenerationOutput, or the exception that ended the job
    cancelled: threading.Event = field(default_factory=threading.Event)


class Engine:
    """Runs `Job`s on `generator` in one worker thread, batching the jobs that wait."""

    def __init__(self, generator, max_batch: int = 8, max_queue: int = 32, language_only: Optional[bool] = None):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be at least 1, got {max_batch} and {max_queue}")
        self.generator, self.max_batch, self.max_queue = generator, max_batch, max_queue
        self.language_only = language_only  # None: language-only for text prompts, as `eve-ms chat`
        self._waiting: collections.deque[Job] = collections.deque()
        self._wake = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self.stats = {"batches": 0, "largest_batch": 0, "completed": 0, "cancelled": 0, "failed": 0, "running": 0}

    # ------------------------------------------------------------------ the HTTP side

    def submit(self, job: Job) -> None:
        with self._wake:
            if self._stopping:
                raise RuntimeError("the engine is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting already (--max-queue {self.max_queue})")
            self._waiting.append(job)
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job from the queue, or stop it at its batch's next step."""
        job.cancelled.set()
        with self._wake:
            if job in self._waiting:
                self._waiting.remove(job)
                self.stats["cancelled"] += 1

    def snapshot(self) -> dict:
        with self._wake:
            return dict(self.stats, waiting=len(self._waiting), max_batch=self.max_batch, max_queue=self.max_queue)

    # ------------------------------------------------------------------ the worker

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="eve-ms-model", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _next_batch(self) -> Optional[list[Job]]:
        with self._wake:
            while not self._waiting and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return None
            batch = []
            while self._waiting and len(batch) < self.max_batch:
                batch.append(self._waiting.popleft())
            self.stats["running"] = len(batch)
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)
            with self._wake:
                self.stats["running"] = 0

    def _run(self, batch: list[Job]) -> None:
        try:
            outputs = self.generator.generate(
                [job.ids for job in batch], [job.pixels for job in batch], configs=[job.config for job in batch],
                language_only=self.language_only, stream=lambda index, piece: batch[index].on_piece(piece),
                cancelled=lambda index: batch[index].cancelled.is_set(),
            )
        except Exception as err:  # the HTTP side checked the input: this is a fault, but it must not end the worker
            log.exception("generation failed")
            with self._wake:
                self.stats["failed"] += len(batch)
            for job in batch:
                job.on_done(err)
            return
        with self._wake:
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            for output in outputs:
                self.stats["cancelled" if output.finish_reason == "cancelled" else "completed"] += 1
        for job, output in zip(batch, outputs):
            job.on_done(output)
