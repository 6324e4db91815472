"""A run killed with SIGKILL mid-way and resumed with --resume ends with the weights of an uninterrupted run."""
import signal
import subprocess

import mindspore as ms
import numpy as np

import subprocess_runs as runs
import toy_task
from eve_ms.training.checkpoint import read_safetensors, save_weights
from eve_ms.training.config import load_train_config
from eve_ms.training.distributed import DistInfo
from eve_ms.training.metrics import read_log
from eve_ms.training.trainer import Trainer


def test_sigkill_then_resume_reaches_the_uninterrupted_weights(tmp_path):
    ms.set_seed(3)
    init = str(tmp_path / "init.safetensors")
    save_weights(toy_task.ToyLM(), init)  # the "previous stage" this run starts from
    out = tmp_path / "run"
    common = dict(
        load_checkpoint=init,
        runner_config={"batch_size": 2, "gradient_accumulation_steps": 2, "epochs": 2},  # 12 steps
        checkpoint={"save_checkpoint_steps": 2, "keep_checkpoint_max": 2},
    )
    config_path = runs.write_config(
        tmp_path / "run.yaml", output_dir=str(out), task_options={"trainable": "lora", "sleep_s": 0.15}, **common
    )

    proc = subprocess.Popen(runs.train_command(config_path), cwd=runs.REPO, env=runs.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        reached = runs.wait_for_file(str(out / "checkpoints" / f"step_{4:08d}.safetensors"), proc, timeout=240)
        proc.send_signal(signal.SIGKILL)
    finally:
        output = proc.communicate()[0]
    assert reached, output[-3000:]
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()  # it really was stopped before the end
    killed_at = len(read_log(str(out / "train_log.jsonl")))
    assert 4 <= killed_at < 12

    resumed = runs.run(runs.train_command(config_path, "--resume"))
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout

    # the uninterrupted reference, in this process, same config without the slow-down
    reference_config = runs.write_config(
        tmp_path / "ref.yaml", output_dir=str(tmp_path / "ref"), task_options={"trainable": "lora"}, **common
    )
    config = load_train_config(reference_config)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        ms.set_seed(config.seed)
        task = toy_task.build(config, DistInfo())
        reference = Trainer(config, task, DistInfo(), log=lambda *a, **k: None).fit()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)

    final, _ = read_safetensors(str(out / "model.safetensors"))
    params = {p.name: p.asnumpy() for p in task.network.get_parameters()}
    assert sorted(final) == sorted(params)
    for name, value in params.items():
        np.testing.assert_allclose(final[name], value, atol=1e-6, err_msg=name)
    log = read_log(str(out / "train_log.jsonl"))
    assert [r["step"] for r in log] == list(range(1, 13))
    np.testing.assert_allclose([r["loss"] for r in log], [r["loss"] for r in reference], atol=1e-6)
