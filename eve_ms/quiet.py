"""Start-up hygiene of the command line: where framework logs go, and which framework warnings are hidden.

MindSpore and MindFormers write log folders (`./output/log/rank_0/`, `rank_0/om/`) relative to
the working directory unless told otherwise, and the frameworks print a handful of deprecation
and import warnings that say nothing about the user's run. `start_up()` runs before any of them
is imported: it points their log folders at a cache folder (a training run moves them under its
output_dir, see `log_under`) and filters the warnings listed in `HARMLESS_WARNINGS`. With
`verbose` nothing is hidden and the frameworks' own defaults stay.
"""
from __future__ import annotations

import logging
import os
import re
import warnings

# (message regex, category) of warnings known to be harmless for eve-ms users; each was seen on
# the pinned versions at start-up and says nothing about the run.
HARMLESS_WARNINGS = (
    (r".*pkg_resources is deprecated.*", DeprecationWarning),
    (r".*pkg_resources is deprecated.*", UserWarning),
    (r".*declare_namespace.*", DeprecationWarning),
    (r".*distutils.*", DeprecationWarning),
    (r".*np\.find_common_type is deprecated.*", DeprecationWarning),
    (r".*`torch_dtype` is deprecated.*", UserWarning),
    (r".*TypedStorage is deprecated.*", UserWarning),
    (r".*The value of the smallest subnormal.*", UserWarning),
)
# MindFormers logs these at import: optional modules of models eve-ms does not use.
HARMLESS_LOG_MESSAGES = (r"Import \w+ failed: No module named 'hyper_parallel'",)
# MindSpore's C++ log level: 3 = errors only (its warnings are about its own internals).
QUIET_GLOG = "3"


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
    # MindFormers' logger is named "mindformers" + its log folder; created here first, it keeps the filter.
    if os.environ.get("EVE_MS_VERBOSE", "") in ("", "0"):
        logging.getLogger("mindformers" + os.path.expanduser(os.environ["LOG_MF_PATH"])).addFilter(_FILTER)


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
    os.environ.setdefault("GLOG_v", QUIET_GLOG)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for message, category in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
