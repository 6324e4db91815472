"""Step logs: TensorBoard event files (rank 0 only; a restarted run hides what it redoes), read back by tensorboard."""
import os

import pytest

from eve_ms.training.metrics import TensorBoardLog

pytest.importorskip("tensorboard")


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _record(step, loss):
    return {"step": step, "loss": loss, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 100.0, "aux_loss": 0.25,
            "tokens": 10, "skipped": False, "token_success_rate": {"llm.layers.0": 0.75}}


def test_disabled_log_writes_nothing(tmp_path):
    log = TensorBoardLog(str(tmp_path), enabled=False)  # what ranks other than 0 get
    log.write(_record(1, 2.0))
    log.close()
    assert os.listdir(tmp_path) == []


def test_a_restarted_run_replaces_the_steps_it_redoes(tmp_path):
    first = TensorBoardLog(str(tmp_path), purge_step=1)
    for step in range(1, 6):
        first.write(_record(step, float(step)))
    first.close()
    resumed = TensorBoardLog(str(tmp_path), purge_step=4)  # resumed from the checkpoint of step 3
    for step in range(4, 7):
        resumed.write(_record(step, 10.0 * step))
    resumed.close()
    scalars = _scalars(tmp_path)
    assert scalars["train/loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]
    assert scalars["token_success_rate/llm.layers.0"] == [(s, 0.75) for s in range(1, 7)]
    assert {"train/lr", "train/grad_norm", "train/tokens_per_s", "train/aux_loss"} <= set(scalars)
    assert "train/tokens" not in scalars and "train/skipped" not in scalars
