"""Test support: run `eve-ms train` on the toy task in a subprocess, alone or under msrun."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TOY_TASK = os.path.join(HERE, "toy_task.py") + ":build"
ENTRY = os.path.join(HERE, "train_entry.py")


def write_config(path, **sections) -> str:
    raw = {
        "task": TOY_TASK,
        "seed": 0,
        "context": {"mode": 0, "runtime_num_threads": 2},
        "lr_schedule": {"learning_rate": 0.05, "warmup_ratio": 0.2},
        "logging": {"progress_bar": False, "plot_at_end": False},
        "pet_config": {"lora_rank": 2, "lora_alpha": 4, "lora_dropout": 0.0},
    }
    raw.update(sections)
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(raw, fh, sort_keys=False)
    return str(path)


def env() -> dict:
    environ = dict(os.environ)
    environ["PYTHONPATH"] = REPO + os.pathsep + environ.get("PYTHONPATH", "")
    environ["GLOG_v"] = "3"
    environ.pop("EVE_DEVICE_TARGET", None)
    return environ


def train_command(config_path, *extra) -> list[str]:
    return [sys.executable, ENTRY, "--config", str(config_path), *extra]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def msrun_command(workers, log_dir, config_path) -> list[str]:
    return [
        "msrun", f"--worker_num={workers}", f"--local_worker_num={workers}", f"--master_port={free_port()}",
        f"--log_dir={log_dir}", "--join=True", "--cluster_time_out=120", ENTRY, "--config", str(config_path),
    ]


def run(command, timeout=300) -> subprocess.CompletedProcess:
    """Run to completion; on timeout the whole process group (msrun's workers too) is killed."""
    proc = subprocess.Popen(command, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\n[killed after {timeout} s]"
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def wait_for_file(path, proc, timeout=900) -> bool:
    """Wait until `path` exists (True) or `proc` ends or `timeout` seconds pass (whether it exists then)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) or proc.poll() is not None:
            return os.path.exists(path)
        time.sleep(0.05)
    return False
