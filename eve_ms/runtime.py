"""MindSpore context set-up in one place: device target, execution mode, threads.

The device target comes from the caller (yaml), else the environment variable
`EVE_DEVICE_TARGET`, else CPU. Thread count is part of the default configuration:
on a small CPU, MindSpore's default thread pool oversubscribes the cores.
"""
from __future__ import annotations

import os

DEVICE_TARGETS = ("CPU", "GPU", "Ascend")
MODES = {"graph": 0, "pynative": 1}


def resolve_device_target(device_target: str | None = None) -> str:
    target = device_target or os.environ.get("EVE_DEVICE_TARGET") or "CPU"
    canonical = {t.lower(): t for t in DEVICE_TARGETS}
    if target.lower() not in canonical:
        raise ValueError(f"unknown device_target {target!r}; expected one of {DEVICE_TARGETS}")
    return canonical[target.lower()]


def setup_context(device_target: str | None = None, mode: str | int = "graph", num_threads: int | None = None) -> str:
    """Set MindSpore's global context; returns the device target used."""
    import mindspore as ms

    target = resolve_device_target(device_target)
    if isinstance(mode, str):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(MODES)}")
        mode = MODES[mode]
    kwargs = {"device_target": target, "mode": mode}
    if target == "CPU":
        kwargs["runtime_num_threads"] = num_threads or max(1, min(os.cpu_count() or 1, 8))
        # PyNative's asynchronous dispatch costs more than it hides on CPU (2x measured on the tiny
        # stage-2 step); it must be chosen before the first op runs.
        kwargs["pynative_synchronize"] = True
    ms.set_context(**kwargs)
    return target


def current_device_target() -> str:
    import mindspore as ms

    return ms.get_context("device_target")
