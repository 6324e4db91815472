"""Start-up hygiene of the command line: where framework logs go, and which framework warnings are hidden.

MindSpore and MindFormers write log folders (`./output/log/rank_0/`, `rank_0/om/`) relative to
the working directory unless told otherwise, and the frameworks print a handful of deprecation
and import warnings that say nothing about the user's run. `start_up()` runs before any of them
is imported: it points their log folders at a cache folder (a training run moves them under its
output_dir, see `log_under`) and filters the log lines listed in `HARMLESS_LOG_MESSAGES` (each
seen at start-up with the pinned MindSpore 2.9 / MindFormers 1.9; anything else still shows). With
`verbose` nothing is hidden.
"""
from __future__ import annotations

import logging
import os
import re

# Log lines known to be harmless: MindFormers' optional modules of models eve-ms does not use, and
# MindSpore's notices about its own API (set_context parameters, module renames) that users cannot act on.
HARMLESS_LOG_MESSAGES = (
    r"Import \w+ failed: No module named 'hyper_parallel'",
    r"For 'context\.set_context', the parameter '\w+' will be deprecated",
    r"Module 'mindspore\.[\w.]+' is deprecated from version",
)


def default_log_dir() -> str:
    """The cache folder framework logs go to when no run output folder is known."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "eve-ms", "logs")


class _HarmlessFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(re.search(pattern, message) for pattern in HARMLESS_LOG_MESSAGES)


_FILTER = _HarmlessFilter()


def _filter_mindformers_log() -> None:
    # MindFormers' logger is named "mindformers" + its log folder, MindSpore's "ME.mindspore.log.<pid>";
    # created here first, they keep the filter.
    if os.environ.get("EVE_MS_VERBOSE", "") in ("", "0"):
        logging.getLogger("mindformers" + os.path.expanduser(os.environ["LOG_MF_PATH"])).addFilter(_FILTER)
        logging.getLogger(f"ME.mindspore.log.{os.getpid()}").addFilter(_FILTER)


def log_under(directory: str) -> None:
    """Send the frameworks' log folders under `directory` (a run's output folder)."""
    directory = os.path.abspath(directory)
    os.environ["LOG_MF_PATH"] = os.path.join(directory, "mindformers_log")
    _filter_mindformers_log()
    os.environ["GLOG_log_dir"] = os.path.join(directory, "mindspore_log")
    os.environ["MS_DEV_SAVE_GRAPHS_PATH"] = os.path.join(directory, "mindspore_graphs")  # rank_0/om/analyze_fail.ir


def start_up(verbose: bool = False) -> None:
    """Run once at CLI start, before MindSpore / MindFormers are imported."""
    if not os.environ.get("LOG_MF_PATH"):
        os.environ["LOG_MF_PATH"] = os.path.join(default_log_dir(), "mindformers_log")
    os.environ.setdefault("MS_DEV_SAVE_GRAPHS_PATH", os.path.join(default_log_dir(), "mindspore_graphs"))
    if verbose:
        os.environ["EVE_MS_VERBOSE"] = "1"
        return
    _filter_mindformers_log()
