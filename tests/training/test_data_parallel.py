"""msrun with 2 workers trains like 1 worker with the same global batch: same reduced gradients and loss curve."""
import glob
import os

import mindspore as ms
import numpy as np

import subprocess_runs as runs
import toy_task
from eve_ms.training.checkpoint import read_safetensors
from eve_ms.training.config import load_train_config
from eve_ms.training.distributed import DistInfo
from eve_ms.training.metrics import read_log
from eve_ms.training.trainer import Trainer

STEPS = 4


def _rank_target_counts(world, step_count):
    """Target tokens of each rank's micro-batch in each step, from the toy loader's sharding."""
    data = toy_task.make_dataset()
    counts = []
    for rank in range(world):
        loader = toy_task.ToyLoader(data, micro=2, accum=1, rank=rank, world=world, seed=0)
        batches = iter(loader)
        counts.append([toy_task.count_targets(next(batches)) for _ in range(step_count)])
    return np.array(counts)


def test_two_workers_match_one_worker_with_the_same_global_batch(tmp_path):
    counts = _rank_target_counts(2, STEPS)
    assert (counts[0] != counts[1]).any()  # ranks see different numbers of target tokens

    out, grads_dir = tmp_path / "dp", tmp_path / "grads"
    config_path = runs.write_config(
        tmp_path / "dp.yaml",
        output_dir=str(out),
        runner_config={"batch_size": 2, "gradient_accumulation_steps": 1, "stop_step": STEPS},
        parallel_config={"data_parallel": 2},
        checkpoint={"save_checkpoint_steps": 2, "keep_checkpoint_max": 1},
        task_options={"trainable": "all", "dump_grads_dir": str(grads_dir)},
    )
    job = runs.run(runs.msrun_command(2, tmp_path / "msrun_logs", config_path))
    worker_logs = "".join(open(p, errors="replace").read()[-3000:]
                          for p in sorted(glob.glob(str(tmp_path / "msrun_logs" / "worker_*.log"))))
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:] + worker_logs

    # one worker, the same global batch of 4 as 2 micro-batches of 2, in this process
    reference_path = runs.write_config(
        tmp_path / "single.yaml",
        output_dir=str(tmp_path / "single"),
        runner_config={"batch_size": 2, "gradient_accumulation_steps": 2, "stop_step": STEPS},
        task_options={"trainable": "all"},
    )
    config = load_train_config(reference_path)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        ms.set_seed(config.seed)
        task = toy_task.build(config, DistInfo())
        reference_grads = []
        task.hooks = [lambda trainer, step: reference_grads.append(trainer.gradients())]
        reference = Trainer(config, task, DistInfo(), log=lambda *a, **k: None).fit()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)

    for step in range(1, STEPS + 1):
        rank0 = np.load(grads_dir / f"rank0_step{step}.npz")
        rank1 = np.load(grads_dir / f"rank1_step{step}.npz")
        assert sorted(rank0.files) == sorted(reference_grads[step - 1])
        for name, expected in reference_grads[step - 1].items():
            np.testing.assert_allclose(rank0[name], expected, atol=1e-5, err_msg=f"step {step} {name}")
            np.testing.assert_array_equal(rank1[name], rank0[name])  # all-reduced: identical on every rank

    log = read_log(str(out / "train_log.jsonl"))
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in log], [r["loss"] for r in reference], atol=1e-4)
    assert [r["target_tokens"] for r in log] == list(counts.sum(axis=0))

    # rank 0 alone wrote the run's files
    # (MindFormers' own log folder lands here or wherever $LOG_MF_PATH already pointed: not ours to check)
    written = sorted(set(os.listdir(out)) - {"mindformers_log"})
    events = [name for name in written if name.startswith("events.out.tfevents.")]
    assert len(events) == 1  # rank 0's TensorBoard log
    assert [name for name in written if name not in events] == ["checkpoints", "config.yaml", "model.safetensors",
                                                                 "train_log.jsonl"]
    weights, _ = read_safetensors(str(out / "model.safetensors"))
    for param in task.network.get_parameters():
        np.testing.assert_allclose(weights[param.name], param.asnumpy(), atol=1e-5, err_msg=param.name)
