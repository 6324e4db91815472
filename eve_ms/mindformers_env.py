"""Import MindFormers without its side effects on the working directory and the console.

On import MindFormers creates `./output/log/rank_N/` in the working directory and logs at
INFO level to stdout. Its logs go to `$LOG_MF_PATH` instead (set by the launcher to the run's
output directory, else a folder in the temp directory), and only its warnings reach stdout.
The import takes seconds, so modules call this only where MindFormers is needed; the model
files that register classes with MindFormers take its registry from `mindformers_registry()`,
so importing them never writes MindFormers' logs into the working directory either.
"""
from __future__ import annotations

import logging
import os
import tempfile


def import_mindformers(log_dir: str | None = None):
    """Import and return the `mindformers` package, its logs under `log_dir` when given."""
    if log_dir:
        os.environ["LOG_MF_PATH"] = os.path.abspath(log_dir)
    else:
        os.environ.setdefault("LOG_MF_PATH", os.path.join(tempfile.gettempdir(), "eve_ms_mindformers_log"))
    import mindformers

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("mindformers"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return mindformers


def mindformers_registry():
    """(MindFormerModuleType, MindFormerRegister), MindFormers imported by `import_mindformers`."""
    import_mindformers()
    from mindformers.tools.register import MindFormerModuleType, MindFormerRegister

    return MindFormerModuleType, MindFormerRegister
