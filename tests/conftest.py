"""Test set-up: MindSpore on CPU, PyNative by default; `graph_mode` switches a test to graph mode."""
import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ warnings drown pytest's output
# MindFormers writes its logs under ./output unless told otherwise: keep the checkout clean.
os.environ.setdefault("LOCAL_DEFAULT_PATH", os.path.join(os.environ.get("TMPDIR", "/tmp"), "eve_ms_mindformers"))

# tools/ modules that tests exercise (parity_cases, ...) import by name, as tools/parity.py imports them
sys.path.append(str(Path(__file__).resolve().parents[1] / "tools"))

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ms.set_context(device_target="CPU", mode=ms.PYNATIVE_MODE, runtime_num_threads=2)


@pytest.fixture
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture(params=["pynative", "graph"])
def any_mode(request):
    """Run a test in both execution modes."""
    ms.set_context(mode=ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE)
    yield request.param
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def parity(monkeypatch):
    """tools/parity.py loaded fresh, with only its built-in cases; restores PyNative (it sets the mode asked for)."""
    path = Path(__file__).resolve().parents[1] / "tools" / "parity.py"
    spec = importlib.util.spec_from_file_location("eve_parity_tool", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "CASES", [])
    yield module
    ms.set_context(mode=ms.PYNATIVE_MODE)


# Files whose tests take a minute or more (`--durations`, one process, 2-core machine): the quick demo (154 s
# fixture), a run killed and resumed (135 s), msrun and stage-chain runs, graph-mode decoding. pytest-xdist's
# loadfile hands files out in collection order, so these go first and the two processes end together instead
# of one finishing the longest files alone.
SLOW_FILES = ("test_demo.py", "training/test_reproducible_runs.py", "training/test_memory_options.py",
              "training/test_stages.py", "models/test_kv_cache.py", "inference/test_batch_invariance.py",
              "training/test_data_parallel.py", "training/test_resume_after_kill.py", "test_cli_errors.py",
              "inference/test_predictor.py")


def pytest_collection_modifyitems(session, config, items):
    tests = Path(__file__).resolve().parent

    def rank(item):
        relative = Path(item.path).resolve().relative_to(tests).as_posix()
        return SLOW_FILES.index(relative) if relative in SLOW_FILES else len(SLOW_FILES)

    items.sort(key=rank)  # stable: the order inside a file, and among the other files, is kept
