"""`eve-ms train --config X.yaml [--resume]`: train one stage, alone or as one rank of an msrun job.

The same command runs on one process or, under
`msrun --worker_num=N --local_worker_num=N --master_port P --log_dir D --join=True <script> --config X.yaml`,
as rank r of an N-way data-parallel job (each rank builds its own loader shard; rank 0 alone
writes the log, checkpoints, weights and plots). The device target comes from the yaml's
`context.device_target`, else $EVE_DEVICE_TARGET, else CPU.

The yaml's `task` names the builder of network and data, `module:function` or
`path/to/file.py:function`, called as `build(config, dist) -> TrainTask`
(see eve_ms.training.trainer); the default is the Eve stages' `eve_ms.training.stages:build_stage`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import random
import sys

from eve_ms.config import ConfigError
from eve_ms.training.config import TrainConfig, load_train_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run yaml (MindFormers layout, see eve_ms.training.config)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume", action="store_true",
        help="continue from the newest usable checkpoint in the output folder (an error if there is none)",
    )
    resume.add_argument(
        "--resume-or-start", action="store_true",
        help="continue from the newest usable checkpoint, or start at step 0 if there is none",
    )
    parser.add_argument("--output_dir", default=None, help="override the yaml's output_dir")


def resolve_task(spec: str):
    """The builder function named by `module:function` or `path/to/file.py:function`."""
    target, _, function = spec.rpartition(":")
    if not target or not function:
        raise ConfigError(f"task {spec!r} must be 'module:function' or 'file.py:function'")
    if target.endswith(".py"):
        if not os.path.exists(target):
            raise ConfigError(f"task file not found: {target}")
        name = "eve_ms_task_" + os.path.splitext(os.path.basename(target))[0]
        module_spec = importlib.util.spec_from_file_location(name, target)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            raise ConfigError(f"task module {target!r} cannot be imported: {err}") from err
    if not hasattr(module, function):
        raise ConfigError(f"task module {target!r} has no function {function!r}")
    return getattr(module, function)


GRAPH_DUMPS_DIR = "graph_dumps"
_USER_OM_PATH = os.environ.get("MS_OM_PATH")  # a folder the user chose for MindSpore's dumps is kept


def keep_graph_dumps_in(output_dir: str) -> str:
    """Point MindSpore's graph-compile dumps (`rank_N/om/analyze_fail.ir`, by default under the working
    directory) at `<output_dir>/graph_dumps` via $MS_OM_PATH, read when a compile fails; returns the folder."""
    folder = _USER_OM_PATH or os.path.abspath(os.path.join(output_dir, GRAPH_DUMPS_DIR))
    os.environ["MS_OM_PATH"] = folder
    return folder


def train(config: TrainConfig, resume: bool = False, start_if_none: bool = False):
    """Set up context and data parallelism, build the task, train; returns the Trainer.

    `resume`: continue from the newest usable checkpoint (an error if there is none, unless `start_if_none`).
    """
    import mindspore as ms
    import numpy as np

    from eve_ms.runtime import setup_context
    from eve_ms.training.distributed import init_distributed
    from eve_ms.training.trainer import Trainer

    from eve_ms.quiet import log_under

    log_under(config.output_dir)  # framework logs go under the run's folder
    keep_graph_dumps_in(config.output_dir)
    setup_context(config.context.device_target, config.context.mode_name, config.context.runtime_num_threads)
    dist = init_distributed()
    ms.set_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    if dist.is_main:
        os.makedirs(config.output_dir, exist_ok=True)
        with open(os.path.join(config.output_dir, "config.yaml"), "w", encoding="utf-8") as fh:
            fh.write(config.yaml_text)
    task = resolve_task(config.task)(config, dist)
    trainer = Trainer(config, task, dist)
    trainer.fit(resume=resume, start_if_none=start_if_none)
    if dist.is_main and config.logging.plot_at_end:
        from eve_ms.training.plots import plot_log

        plot_log(trainer.metrics.path, os.path.join(config.output_dir, "plots"))
    return trainer


def run(args) -> int:
    """Errors reach the caller (eve_ms.cli.main, or `main` below), which prints them as one line."""
    config = load_train_config(args.config)
    if args.output_dir:
        config.output_dir = args.output_dir
    resume_or_start = getattr(args, "resume_or_start", False)
    train(config, resume=args.resume or resume_or_start or config.resume_training, start_if_none=resume_or_start)
    return 0


def main(argv=None) -> int:
    """`tools/run_eve.py` (and msrun workers): `eve-ms train` without the `eve-ms` front, same errors and flags."""
    from eve_ms.cli import main as cli_main

    argv = sys.argv[1:] if argv is None else list(argv)
    return cli_main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
