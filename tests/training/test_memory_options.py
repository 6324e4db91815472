"""Trainer options the planner advises: recompute of decoder layers and MindSpore's optimizer parallel.

Recompute (`recompute_config.recompute`) must change memory, never results: two msrun workers train the
same loss curve with and without it. Optimizer parallel (`parallel.enable_parallel_optimizer`) runs on
Ascend only: on CPU the yaml is refused when it loads, and MindSpore itself refuses it under msrun
(measured here, so the config error is lifted when MindSpore lifts its limit).
"""
import glob
import os

import pytest

import subprocess_runs as runs
from eve_ms.config import ConfigError
from eve_ms.training.config import train_config_from_dict
from eve_ms.training.metrics import read_log

STEPS = 4
HERE = os.path.dirname(os.path.abspath(__file__))


def _two_worker_losses(tmp_path, name, **sections):
    out = tmp_path / name
    config_path = runs.write_config(
        tmp_path / f"{name}.yaml",
        output_dir=str(out),
        runner_config={"batch_size": 2, "gradient_accumulation_steps": 1, "stop_step": STEPS},
        parallel_config={"data_parallel": 2},
        checkpoint={"save_checkpoint_steps": STEPS, "keep_checkpoint_max": 1},
        task_options={"trainable": "all"},
        **sections,
    )
    job = runs.run(runs.msrun_command(2, tmp_path / f"{name}_logs", config_path))
    logs = "".join(open(p, errors="replace").read()[-3000:]
                   for p in sorted(glob.glob(str(tmp_path / f"{name}_logs" / "worker_*.log"))))
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:] + logs
    records = read_log(str(out / "train_log.jsonl"))
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    return [r["loss"] for r in records], [r["grad_norm"] for r in records]


def test_recompute_trains_two_workers_to_the_same_loss_curve(tmp_path):
    plain, plain_norms = _two_worker_losses(tmp_path, "plain")
    recomputed, recomputed_norms = _two_worker_losses(tmp_path, "recompute", recompute_config={"recompute": True})
    print(f"losses without recompute {plain}, with {recomputed}")
    assert len(set(plain)) == STEPS  # the loss moves: a curve, not one value repeated
    assert max(abs(a - b) for a, b in zip(plain, recomputed)) <= 1e-5, (plain, recomputed)
    assert max(abs(a - b) for a, b in zip(plain_norms, recomputed_norms)) <= 1e-5


def test_recompute_marks_the_first_n_layers(tmp_path):
    import mindspore as ms

    import toy_task
    from eve_ms.training.distributed import DistInfo
    from eve_ms.training.trainer import Trainer, TrainingError

    config = train_config_from_dict({"task": runs.TOY_TASK, "output_dir": str(tmp_path),
                                     "recompute_config": {"recompute": 1}, "task_options": {"trainable": "all"}})
    ms.set_seed(0)
    task = toy_task.build(config, DistInfo())
    trainer = Trainer(config, task, DistInfo(), log=lambda *a, **k: None)
    assert trainer.recomputed == ["llm.layers.0"]
    task = toy_task.build(config, DistInfo())
    task.layer_cells = ()
    with pytest.raises(TrainingError, match="names no decoder layers"):
        Trainer(config, task, DistInfo(), log=lambda *a, **k: None)


def test_recompute_of_eve_decoder_layers_keeps_the_stage3_losses(tmp_path):
    """The tiny stage-3 Eve (EVF layers, custom allocation kernel) in PyNative: recompute changes nothing."""
    import mindspore as ms
    import numpy as np
    import toy_task

    from eve_ms.config import IGNORE_INDEX
    from eve_ms.models.eve import EveForCausalLM
    from eve_ms.training.trainable import freeze_for_stage3
    from eve_ms.plan.stage import stage_spec
    from eve_ms.training.config import load_train_config
    from eve_ms.training.trainer import Trainer, TrainTask

    eve = stage_spec(load_train_config(os.path.join(runs.REPO, "yaml_configs", "tiny", "stage3.yaml"))).model
    rng = np.random.default_rng(0)
    b, s, n_image = 4, 32, eve.num_image_tokens
    ids = rng.integers(4, eve.llm.vocab_size, (b, s)).astype(np.int32)
    ids[:, 1:1 + n_image] = eve.image_token_index
    labels = ids.copy()
    labels[:, :1 + n_image] = IGNORE_INDEX
    batch = {"input_ids": ids, "attention_mask": np.ones((b, s), np.int32), "labels": labels,
             "pixel_values": rng.standard_normal((b, 3, eve.vision.image_size, eve.vision.image_size)).astype(
                 np.float32)}
    keys = ("input_ids", "attention_mask", "labels", "pixel_values")

    curves = {}
    ms.set_context(mode=ms.PYNATIVE_MODE)
    for recompute in (False, True):
        ms.set_seed(0)
        model = EveForCausalLM(eve)
        for param in model.get_parameters():
            param.requires_grad = False
        freeze_for_stage3(model.llm)
        config = train_config_from_dict({"stage": 3, "output_dir": str(tmp_path / str(recompute)),
                                         "lr_schedule": {"learning_rate": 1e-3, "total_steps": 10},
                                         "recompute_config": {"recompute": recompute}})
        task = TrainTask(network=model, loader=toy_task.FixedBatches(batch), input_keys=keys,
                         layer_cells=tuple(f"llm.model.layers.{i}" for i in range(eve.llm.num_layers)))
        trainer = Trainer(config, task, log=lambda *a, **k: None)
        assert len(trainer.recomputed) == (eve.llm.num_layers if recompute else 0)
        model.set_train(True)
        records = [trainer.train_step([batch]) for _ in range(3)]
        curves[recompute] = [(r["loss"], r["grad_norm"]) for r in records]
    assert len({loss for loss, _ in curves[False]}) == 3
    np.testing.assert_allclose(curves[True], curves[False], rtol=0, atol=1e-6)


def test_recompute_and_parallel_settings_are_checked_when_the_yaml_loads(monkeypatch):
    monkeypatch.delenv("EVE_DEVICE_TARGET", raising=False)
    with pytest.raises(ConfigError, match="recompute_config.recompute"):
        train_config_from_dict({"recompute_config": {"recompute": -1}}, "run.yaml")
    with pytest.raises(ConfigError, match=r"enable_parallel_optimizer needs device target Ascend .*CPU.*run\.yaml"):
        train_config_from_dict({"parallel": {"enable_parallel_optimizer": True}}, "run.yaml")
    with pytest.raises(ConfigError, match="optimizer.fused"):
        train_config_from_dict({"parallel": {"enable_parallel_optimizer": True}, "optimizer": {"fused": False},
                                "context": {"device_target": "Ascend"}}, "run.yaml")
    ascend = train_config_from_dict({"parallel": {"enable_parallel_optimizer": True},
                                     "context": {"device_target": "Ascend"}})
    assert ascend.parallel.enable_parallel_optimizer
    assert train_config_from_dict({"recompute_config": {"recompute": 3}}).recompute_config.layers(22) == 3
    assert train_config_from_dict({"recompute_config": {"recompute": True}}).recompute_config.layers(22) == 22


def test_mindspore_refuses_optimizer_parallel_on_cpu_under_msrun(tmp_path):
    """What fails on CPU, measured: MindSpore's own check in nn.Optimizer, with the cluster up (2 workers)."""
    probe = os.path.join(HERE, "optimizer_parallel_probe.py")
    job = runs.run([
        "msrun", "--worker_num=2", "--local_worker_num=2", f"--master_port={runs.free_port()}",
        f"--log_dir={tmp_path / 'logs'}", "--join=True", "--cluster_time_out=120", probe,
    ])
    logs = "".join(open(p, errors="replace").read() for p in sorted(glob.glob(str(tmp_path / "logs" / "worker_*.log"))))
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:] + logs[-4000:]
    assert logs.count("REFUSED RuntimeError") == 2, logs[-4000:]
    assert 'parallel optimizer only supports "Ascend" in data parallel mode, but got CPU' in logs
