"""Training steps of the toy task: gradient normalisation and accumulation, freezing, lr, NaN and precision."""
import math
import os

import mindspore as ms
import numpy as np
import pytest
import torch

import toy_task
from eve_ms.config import IGNORE_INDEX
from eve_ms.training.checkpoint import read_safetensors
from eve_ms.training.config import LoraSettings, train_config_from_dict
from eve_ms.training.distributed import DistInfo
from eve_ms.training.lora import lora_settings_of
from eve_ms.training.metrics import read_log
from eve_ms.training.optim import optimizer_state
from eve_ms.training.trainer import NonFiniteError, Trainer


def make_trainer(tmp_path, micro=2, accum=2, options=None, **sections):
    raw = {
        "task": "toy_task:build",
        "output_dir": str(tmp_path),
        "runner_config": {"batch_size": micro, "gradient_accumulation_steps": accum, "epochs": 1},
        "lr_schedule": {"learning_rate": 0.05, "warmup_ratio": 0.2},
        "logging": {"progress_bar": False, "plot_at_end": False},
        "task_options": options or {},
        "pet_config": {"lora_rank": 2, "lora_alpha": 4, "lora_dropout": 0.0},
    }
    raw.update(sections)
    config = train_config_from_dict(raw)
    ms.set_seed(0)
    task = toy_task.build(config, DistInfo())
    return Trainer(config, task, DistInfo(), log=lambda *a, **k: None), task


def capture_gradients(trainer, task):
    grads = []
    task.hooks = [lambda tr, step: grads.append(tr.gradients())]
    return grads


def torch_reference_gradients(network, batches, aux_alpha=0.01):
    """Gradients of sum(nll) / N_global + mean over micro-batches of aux, with PyTorch autograd."""
    weights = {p.name: torch.tensor(p.asnumpy(), dtype=torch.float64, requires_grad=p.requires_grad)
               for p in network.get_parameters()}

    def dense(h, name, bias=True):
        out = h @ weights[f"{name}.weight"].T
        return out + weights[f"{name}.bias"] if bias else out

    num_targets = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    objective = 0.0
    for batch in batches:
        h = dense(torch.tensor(batch["features"], dtype=torch.float64), "adapter")
        hidden = []
        for i in range(2):
            h = h + dense(torch.tanh(dense(h, f"llm.layers.{i}.up")), f"llm.layers.{i}.down", bias=False)
            hidden.append(h)
        log_probs = torch.log_softmax(dense(h, "llm.head"), -1)
        labels = torch.tensor(batch["labels"], dtype=torch.long)
        mask = labels != IGNORE_INDEX
        nll = -log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        objective = objective + (nll * mask).sum() / num_targets + aux_alpha * hidden[0].pow(2).mean() / len(batches)
    objective.backward()
    return {n: w.grad.numpy() for n, w in weights.items() if w.requires_grad}


def test_step_gradients_are_those_of_the_global_token_mean_loss(tmp_path):
    trainer, task = make_trainer(tmp_path, micro=2, accum=2, options={"trainable": "all"})
    grads = capture_gradients(trainer, task)
    batches = [trainer._next_micro_batch() for _ in range(2)]
    counts = [toy_task.count_targets(b) for b in batches]
    assert counts[0] != counts[1]  # micro-batches with different target counts
    reference = torch_reference_gradients(task.network, batches)
    record = trainer.train_step(batches)
    assert sorted(grads[0]) == sorted(reference)
    for name, grad in grads[0].items():
        np.testing.assert_allclose(grad, reference[name], atol=1e-6, err_msg=name)
    assert record["target_tokens"] == sum(counts)


def test_two_accumulated_micro_batches_equal_one_batch_of_four(tmp_path):
    split, split_task = make_trainer(tmp_path / "a", micro=2, accum=2)
    whole, whole_task = make_trainer(tmp_path / "b", micro=4, accum=1)
    split_grads, whole_grads = capture_gradients(split, split_task), capture_gradients(whole, whole_task)
    for _ in range(2):
        rec_split = split.train_step([split._next_micro_batch() for _ in range(2)])
        rec_whole = whole.train_step([whole._next_micro_batch()])
        assert rec_split["loss"] == pytest.approx(rec_whole["loss"], abs=1e-6)
    for step in range(2):
        for name in split_grads[step]:
            np.testing.assert_allclose(split_grads[step][name], whole_grads[step][name], atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """Six steps of LoRA training in graph mode: (task, parameters before, records, output folder)."""
    out = tmp_path_factory.mktemp("lora_run")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        trainer, task = make_trainer(out, micro=2, accum=1, options={"trainable": "lora", "num_samples": 12})
        task.eval_cells = ["llm.layers"]
        before = {p.name: p.asnumpy().copy() for p in task.network.get_parameters()}
        records = trainer.fit()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    return task, before, records, out


def test_frozen_parameters_do_not_change_and_trainable_ones_do(lora_run):
    task, before, records, _ = lora_run
    assert len(records) == 6
    params = task.network.get_parameters()
    assert sum(p.requires_grad for p in params) == 2 + 2 * 5  # adapter + A and B of five LoRA layers
    for param in task.network.get_parameters():
        changed = np.abs(param.asnumpy() - before[param.name]).max()
        if param.requires_grad:
            assert changed > 0, f"trainable {param.name} did not change"
        else:
            assert changed == 0, f"frozen {param.name} changed by {changed}"


def test_training_mode_is_set_except_for_eval_cells(lora_run):
    task = lora_run[0]
    assert task.network.adapter.training and task.network.llm.head.training
    assert not task.network.llm.layers.training and not task.network.llm.layers[1].up.training


def test_log_records_every_step_with_the_scheduled_lr(lora_run):
    task, _, _, out = lora_run
    records = read_log(str(out / "train_log.jsonl"))
    assert [r["step"] for r in records] == list(range(1, 7))
    total, warmup = 6, int(6 * 0.2)
    for r in records:
        k = r["step"] - 1  # update k uses lr(k)
        cosine = 0.025 * (1 + math.cos(math.pi * (k - warmup) / (total - warmup)))
        expected = 0.05 * k / warmup if k < warmup else cosine
        assert r["lr"] == pytest.approx(expected, rel=1e-5, abs=1e-9)
        assert math.isfinite(r["grad_norm"]) and r["tokens_per_s"] > 0 and not r["skipped"]
        assert set(r["token_success_rate"]) == {"layer_0", "layer_1"}


def test_final_weights_file_holds_every_parameter(lora_run):
    task, _, _, out = lora_run
    tensors, metadata = read_safetensors(str(out / "model.safetensors"))
    assert metadata["kind"] == "weights" and metadata["step"] == "6"
    params = {p.name: p.asnumpy() for p in task.network.get_parameters()}
    assert sorted(tensors) == sorted(params)
    for name, value in params.items():
        np.testing.assert_array_equal(tensors[name], value)
    # the next stage rebuilds the LoRA layers with the settings they were trained with
    expected = LoraSettings(lora_rank=2, lora_alpha=4.0, lora_dropout=0.0)
    assert lora_settings_of(str(out / "model.safetensors")) == expected


def test_nan_loss_stops_training_and_names_the_step(tmp_path):
    trainer, _ = make_trainer(tmp_path, micro=4, accum=1, options={"nan_at_step": 2})
    with pytest.raises(NonFiniteError, match="step 2") as info:
        trainer.fit()
    assert info.value.step == 2
    assert [r["step"] for r in read_log(str(tmp_path / "train_log.jsonl"))] == [1]


def test_gradients_are_clipped_to_max_norm_before_the_update(tmp_path):
    trainer, task = make_trainer(tmp_path, micro=4, accum=1, runner_wrapper={"max_grad_norm": 1e-3})
    grads = capture_gradients(trainer, task)
    record = trainer.train_step([trainer._next_micro_batch()])
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads[0].values()))
    assert record["grad_norm"] == pytest.approx(norm, rel=1e-5) and norm > 1e-3  # reported before clipping
    # AdamW's first moment after one update is (1 - beta1) x the gradient it was given
    factor = 1e-3 / (norm + 1e-6)
    state = optimizer_state(trainer.optimizer, trainer.params)
    for name, grad in grads[0].items():
        np.testing.assert_allclose(state[f"adam_m.{name}"].asnumpy(), 0.1 * factor * grad, rtol=1e-4, atol=1e-10)


def test_float16_overflow_skips_the_step_and_lowers_the_loss_scale(tmp_path):
    # A yaml asking float16 on CPU is refused when it loads (tests/training/test_config_errors_at_load.py: the Eve
    # network's ops lack CPU float16 kernels); the toy's Dense ops have them, so the loss-scale logic is tested here.
    scale = {"loss_scale_value": 2.0**40, "scale_factor": 2**30, "scale_window": 1000}
    trainer, task = make_trainer(tmp_path, micro=4, accum=1, lr_schedule={"learning_rate": 0.05, "warmup_ratio": 0.0},
                                 runner_wrapper={"compute_dtype": "float16", "scale_sense": scale})
    adapter = task.network.adapter.weight
    before = adapter.asnumpy().copy()
    first = trainer.train_step([trainer._next_micro_batch()])
    assert first["skipped"] and first["loss_scale"] == 2.0**40 and not math.isfinite(first["grad_norm"])
    np.testing.assert_array_equal(adapter.asnumpy(), before)  # nothing trained through
    second = trainer.train_step([trainer._next_micro_batch()])
    assert second["loss_scale"] == 2.0**10 and not second["skipped"] and math.isfinite(second["grad_norm"])
    assert np.abs(adapter.asnumpy() - before).max() > 0


def _tensorboard_scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_events_hold_every_logged_scalar(lora_run):
    _, _, _, out = lora_run
    assert len([f for f in os.listdir(out) if f.startswith("events.out.tfevents.")]) == 1  # beside train_log.jsonl
    records = read_log(str(out / "train_log.jsonl"))
    scalars = _tensorboard_scalars(out)
    expected = {f"train/{key}": [(r["step"], r[key]) for r in records]
                for key in ("loss", "lr", "grad_norm", "tokens_per_s", "aux_loss")}
    for layer in ("layer_0", "layer_1"):
        expected[f"token_success_rate/{layer}"] = [(r["step"], r["token_success_rate"][layer]) for r in records]
    assert set(scalars) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in scalars[tag]] == [s for s, _ in points] == list(range(1, 7)), tag
        # event files store float32
        np.testing.assert_allclose([v for _, v in scalars[tag]], [v for _, v in points], rtol=1e-6, err_msg=tag)


def test_tensorboard_off_writes_no_event_file(tmp_path):
    trainer, _ = make_trainer(tmp_path, micro=4, accum=1, runner_config={"batch_size": 4, "stop_step": 1},
                              logging={"progress_bar": False, "plot_at_end": False, "tensorboard": False})
    trainer.fit()
    assert [r["step"] for r in read_log(str(tmp_path / "train_log.jsonl"))] == [1]
    assert not [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents.")]


def test_health_monitor_warns_once_per_stall_and_can_stop():
    from types import SimpleNamespace

    from eve_ms.training.trainer import HealthMonitor

    logged = []
    monitor = HealthMonitor(SimpleNamespace(stall_steps=3, stop_on_stall=False), logged.append)
    steps = [(1, 5.0, 0.7), (2, 4.2, 0.0), (3, 4.2, 0.0), (4, 4.2 + 1e-7, 0.0), (5, 4.2, 0.0), (6, 4.1, 0.3),
             (7, 4.1, 0.0), (8, 4.1, 0.0)]
    events = [monitor.check({"step": s, "loss": loss, "grad_norm": norm, "lr": 1e6}) for s, loss, norm in steps]
    assert [e["step"] for e in events if e] == [4]  # steps 2..4; not again at 5; 7..8 is too short
    assert events[3]["stalled_steps"] == 3 and not events[3]["stop"] and "steps 2..4" in events[3]["message"]
    assert len(logged) == 1 and logged[0].startswith("warning: training health:")
    assert not any(monitor.check({"step": 9, "loss": 4.0, "grad_norm": 0.1, "lr": 1.0}) for _ in range(5))

    stopping = HealthMonitor(SimpleNamespace(stall_steps=2, stop_on_stall=True), logged.append)
    results = [stopping.check({"step": s, "loss": 3.0, "grad_norm": 0.0, "lr": 1.0}) for s in (1, 2)]
    assert results[0] is None and results[1]["stop"]
    off = HealthMonitor(SimpleNamespace(stall_steps=0, stop_on_stall=True), logged.append)
    assert all(off.check({"step": s, "loss": 3.0, "grad_norm": 0.0, "lr": 1.0}) is None for s in range(1, 30))
