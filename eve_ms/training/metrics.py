"""Per-step training records: a JSONL log (one JSON object per optimizer step), TensorBoard event files, a progress bar.

Record keys (see `Trainer.train_step`): step, epoch, loss, aux_loss, lr, grad_norm,
tokens_per_s, tokens, target_tokens, step_time_s, skipped, loss_scale, and
token_success_rate {EVF layer name: rate} when the network reports routing statistics; Eve's
stage 3 also logs routing {EVF layer name: {text|image: {valid, kept_language, kept_vision,
dropped, redistributed}}}, token counts of the step (`eve_ms.training.eve_network.routing_record`).
Event records carry an `event` key and the step they follow: `data_report` (the loader's skip
report, at the end of every epoch and of the run) and `training_health` (loss constant with a
zero gradient norm); `read_log` leaves them out unless asked.
Only rank 0 writes; a resumed run first drops the records after the step it resumes from,
so the log reads as one uninterrupted run (TensorBoard hides them: `purge_step`).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time


def _clean(value):
    """JSON has no NaN/inf: they are written as strings so a broken step stays visible."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def read_log(path: str, events: bool = False) -> list[dict]:
    """The step records of a JSONL log (with `events`, also the event records: {"event": ..., "step": ...},
    e.g. data reports and training-health warnings); a torn last line (a killed writer) is ignored."""
    records = []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON record") from None
        if events or "event" not in record:
            records.append(record)
    return records


class MetricsLog:
    """Append-only JSONL log of step records (a no-op on ranks other than 0)."""

    def __init__(self, path: str, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        if enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Keep only the records of steps <= `step` (what a resumed run has already done)."""
        if not self.enabled:
            return
        if not os.path.exists(self.path):
            return
        kept = [r for r in read_log(self.path, events=True) if r.get("step", 0) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            for record in kept:
                fh.write(json.dumps(record) + "\n")
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_clean(record)) + "\n")
            fh.flush()


class TensorBoardLog:
    """TensorBoard event files of the step records (written by tensorboardX); a no-op when disabled.

    Scalars at global step = the record's step: train/loss, train/lr, train/grad_norm,
    train/tokens_per_s, train/aux_loss and token_success_rate/<EVF layer>. `purge_step` is the first
    step this run logs: TensorBoard hides what an earlier run in the same folder logged from there on,
    as the JSONL log drops it. Events reach the file every `flush_secs` (a live run is watchable).
    """

    SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "aux_loss")

    def __init__(self, logdir: str, enabled: bool = True, purge_step: int | None = None, flush_secs: int = 10):
        self.writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            # tensorboardX names files by the second: a suffix in ns keeps a quick restart's file from
            # overwriting the last one's, and sorts after it (TensorBoard reads a folder's files in name order).
            self.writer = SummaryWriter(logdir=logdir, purge_step=purge_step, flush_secs=flush_secs,
                                        filename_suffix=f".{time.time_ns()}")

    def write(self, record: dict) -> None:
        if self.writer is None:
            return
        step = int(record["step"])
        for key in self.SCALARS:
            if key in record:
                self.writer.add_scalar(f"train/{key}", float(record[key]), step)
        for layer, rate in record.get("token_success_rate", {}).items():
            self.writer.add_scalar(f"token_success_rate/{layer}", float(rate), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()  # flushes
            self.writer = None


class ProgressBar:
    """tqdm bar over optimizer steps showing loss, lr and tokens/s (silent when disabled)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)

    def update(self, record: dict) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix(
            loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False
        )
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
