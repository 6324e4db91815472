"""Native allocation kernels: exact agreement with the numpy reference, backend selection, build cache.

The CPU kernel runs here; the CUDA kernel is compiled (nvcc exists, no GPU); the AscendC
operator is checked on the host in test_ascend_kernel.py.
"""
import ctypes
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eve_ms.ops.kernels import (
    ASCEND_ACLNN_HEADER, ASCEND_OP_TYPE, BACKENDS, KernelAllocation, KernelBuildError, kernel_op_spec,
    select_backend,
)
from eve_ms.ops.kernels.build import build_kernel, library_path
from eve_ms.ops.token_allocation import STRATEGIES, allocate_reference, compute_capacity

REPO = Path(__file__).resolve().parents[2]
ASCEND_PROJECT = REPO / "ascend_kernels" / "img_gbpr"


def _run_kernel(probs, is_image, valid, noise, strategy, capacity_factor, min_capacity, beta, ratio):
    num_tokens = probs.shape[0]
    capacity = compute_capacity(num_tokens, capacity_factor, min_capacity)
    net = KernelAllocation("cpu", num_tokens, strategy, capacity, beta, ratio)
    expert, slot, counts = net(ms.Tensor(probs), ms.Tensor(is_image), ms.Tensor(valid), ms.Tensor(noise))
    return expert.asnumpy(), slot.asnumpy(), counts.asnumpy()


def _assert_matches_reference(probs, is_image, valid, noise, strategy, capacity_factor=1.5, min_capacity=4,
                              beta=1.0, ratio=0.5):
    expert, slot, counts = _run_kernel(probs, is_image, valid, noise, strategy, capacity_factor, min_capacity,
                                       beta, ratio)
    ref = allocate_reference(probs, is_image, valid, noise, strategy=strategy, capacity_factor=capacity_factor,
                             min_capacity=min_capacity, beta=beta, redistribute_ratio=ratio)
    np.testing.assert_array_equal(expert, ref["expert"])
    np.testing.assert_array_equal(slot, ref["slot"])
    np.testing.assert_array_equal(counts, [*ref["kept"], ref["dropped"], ref["redistributed"]])
    assert expert.dtype == slot.dtype == counts.dtype == np.int32
    return ref


def _probs(p_vision):
    p1 = np.asarray(p_vision, np.float32)
    return np.stack([1 - p1, p1], axis=1).astype(np.float32)


# Few distinct values make ties the rule, not the exception.
TIE_VALUES = np.array([0.0, 0.25, 0.5, 0.75, 1.0], np.float32)


def _signed_zeros(values, rng):
    """Half of the zeros become -0.0, which compares equal to +0.0 and must tie with it."""
    return np.where(values == 0, np.copysign(0.0, rng.choice([-1.0, 1.0], values.shape)), values)


@st.composite
def allocation_cases(draw):
    num_tokens = draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    vision_share = draw(st.sampled_from([0.05, 0.5, 0.95]))  # skewed shares make redistribution happen
    if draw(st.booleans()):
        p_vision = rng.choice(TIE_VALUES, num_tokens)
        noise = _signed_zeros(rng.choice(TIE_VALUES[:-1], num_tokens), rng)
    else:
        p_vision = np.clip(rng.normal(vision_share, 0.3, num_tokens), 0, 1)
        noise = rng.random(num_tokens)
    is_image = rng.random(num_tokens) < vision_share
    valid = rng.random(num_tokens) < draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))
    return dict(
        probs=_probs(p_vision), is_image=is_image, valid=valid, noise=noise.astype(np.float32),
        strategy=draw(st.sampled_from(STRATEGIES)),
        capacity_factor=draw(st.sampled_from([0.1, 0.5, 1.0, 1.5, 3.0])),
        min_capacity=draw(st.sampled_from([0, 1, 4])),
        beta=draw(st.sampled_from([0.0, 0.25, 1.0, 3.0])),
        ratio=draw(st.sampled_from([0.0, 0.3, 0.5, 1.0])),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(allocation_cases())
def test_cpu_kernel_equals_reference_on_random_tie_heavy_padded_cases(case):
    _assert_matches_reference(**case)


def test_cpu_kernel_redistributes_overflow_like_the_reference():
    rng = np.random.default_rng(3)
    num_tokens = 200
    is_image = rng.random(num_tokens) < 0.85  # vision overflows, language has room
    probs, noise = _probs(rng.random(num_tokens)), rng.random(num_tokens).astype(np.float32)
    ref = _assert_matches_reference(probs, is_image, np.ones(num_tokens, bool), noise, "img_gbpr",
                                    capacity_factor=1.0, min_capacity=0, beta=1.0, ratio=0.5)
    assert ref["redistributed"] > 0 and ref["dropped"] > 0  # the case exercises both paths


def test_cpu_kernel_ties_negative_zero_with_zero_and_orders_by_index():
    # -0.0 == 0.0 under float comparison: equal priorities, so the lower index wins.
    noise = np.array([-0.0, 0.0, -0.0, 0.0, 0.5, 0.5], np.float32)
    ref = _assert_matches_reference(_probs(np.full(6, 0.9)), np.zeros(6, bool), np.ones(6, bool), noise, "random",
                                    capacity_factor=1.0, min_capacity=0)
    np.testing.assert_array_equal(ref["expert"][[4, 5, 0]], [1, 1, 1])
    np.testing.assert_array_equal(ref["slot"][[4, 5, 0]], [0, 1, 2])


def test_cpu_kernel_compares_float32_scores_exactly():
    # p + beta rounds in float32: 0.1 + 1.0 and 0.1000001 + 1.0 are the same float32, a tie.
    p_vision = np.array([0.1, np.nextafter(np.float32(0.1), np.float32(1)), 1e-45, 0.0], np.float32)
    _assert_matches_reference(_probs(p_vision), np.ones(4, bool), np.ones(4, bool), np.zeros(4, np.float32),
                              "img_gbpr", capacity_factor=0.5, min_capacity=0, beta=1.0)
    _assert_matches_reference(_probs(p_vision), np.ones(4, bool), np.ones(4, bool), np.zeros(4, np.float32),
                              "gbpr", capacity_factor=0.5, min_capacity=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cpu_kernel_equals_reference_at_4096_tokens(strategy):
    rng = np.random.default_rng(7)
    num_tokens = 4096
    _assert_matches_reference(_probs(rng.random(num_tokens)), rng.random(num_tokens) < 0.7,
                              rng.random(num_tokens) < 0.9, rng.random(num_tokens).astype(np.float32), strategy,
                              capacity_factor=0.8, min_capacity=4, beta=0.5, ratio=0.6)


def test_cpu_kernel_in_graph_mode(graph_mode):
    rng = np.random.default_rng(11)
    num_tokens = 96
    ref = _assert_matches_reference(_probs(rng.random(num_tokens)), rng.random(num_tokens) < 0.8,
                                    rng.random(num_tokens) < 0.9, rng.random(num_tokens).astype(np.float32),
                                    "img_gbpr", capacity_factor=1.0, min_capacity=0, beta=1.0, ratio=0.7)
    assert ref["redistributed"] > 0


def test_kernel_allocation_lets_gradients_flow_to_the_router():
    num_tokens = 8
    net = KernelAllocation("cpu", num_tokens, "gbpr", capacity=3)

    def kept_vision_mass(logits):
        probs = ms.ops.softmax(logits, axis=-1)
        expert, _, _ = net(probs, ms.ops.zeros(num_tokens, ms.bool_), ms.ops.ones(num_tokens, ms.bool_),
                           ms.ops.zeros(num_tokens, ms.float32))
        return (probs[:, 1] * (expert == 1).astype(ms.float32)).sum()

    logits = np.random.default_rng(0).normal(size=(num_tokens, 2)).astype(np.float32)
    grad = ms.grad(kept_vision_mass)(ms.Tensor(logits)).asnumpy()
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    kept = allocate_reference(probs, np.zeros(num_tokens), np.ones(num_tokens), np.zeros(num_tokens), strategy="gbpr",
                              capacity_factor=0.75, min_capacity=0)["expert"] == 1
    expected = np.where(kept, probs[:, 1] * probs[:, 0], 0.0)  # d p1 / d logit1 = p1 (1 - p1)
    np.testing.assert_allclose(grad[:, 1], expected, atol=1e-6)


def test_kernel_allocation_casts_other_input_dtypes_like_the_reference():
    rng = np.random.default_rng(5)
    num_tokens = 40
    probs16 = _probs(rng.random(num_tokens)).astype(np.float16)
    is_image, valid = (rng.random(num_tokens) < 0.5).astype(np.int32), (rng.random(num_tokens) < 0.9).astype(np.uint8)
    noise = rng.random(num_tokens)  # float64
    net = KernelAllocation("cpu", num_tokens, "img_gbpr", capacity=12)
    expert, slot, _ = net(ms.Tensor(probs16), ms.Tensor(is_image), ms.Tensor(valid), ms.Tensor(noise))
    ref = allocate_reference(probs16, is_image, valid, noise, strategy="img_gbpr", capacity_factor=0.6,
                             min_capacity=0)
    np.testing.assert_array_equal(expert.asnumpy(), ref["expert"])
    np.testing.assert_array_equal(slot.asnumpy(), ref["slot"])


def test_kernel_allocation_rejects_wrongly_shaped_inputs():
    net = KernelAllocation("cpu", 6, "gbpr", capacity=3)
    with pytest.raises(ValueError, match="probs has shape"):
        net(ms.Tensor(_probs(np.zeros(5))), ms.Tensor(np.zeros(5, bool)), ms.Tensor(np.ones(5, bool)),
            ms.Tensor(np.zeros(5, np.float32)))


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "topk"}, "unknown strategy"),
    ({"capacity": 7}, "capacity"),
    ({"redistribute_ratio": 1.5}, "redistribute_ratio"),
    ({"beta": float("nan")}, "beta"),
])
def test_kernel_op_spec_rejects_invalid_parameters(kwargs, message):
    args = {"num_tokens": 6, "strategy": "gbpr", "capacity": 3, "beta": 1.0, "redistribute_ratio": 0.5, **kwargs}
    with pytest.raises(ValueError, match=message):
        kernel_op_spec("cpu", build=False, **args)


# ---- backend selection -------------------------------------------------------------------------

@pytest.fixture
def toolchains(monkeypatch, tmp_path):
    """Switch compilers and the Ascend op package on/off through the real environment knobs."""
    def configure(cxx=True, nvcc=True, ascend_op=True):
        missing = str(tmp_path / "missing-compiler")
        monkeypatch.setenv("EVE_MS_CXX", "g++" if cxx else missing)
        monkeypatch.setenv("EVE_MS_NVCC", "nvcc" if nvcc else missing)
        vendor = tmp_path / "vendors" / "eve_ms"
        if ascend_op:
            (vendor / "op_api" / "include").mkdir(parents=True, exist_ok=True)
            (vendor / "op_api" / "include" / ASCEND_ACLNN_HEADER).write_text("// installed\n")
        monkeypatch.setenv("ASCEND_CUSTOM_OPP_PATH", str(vendor))
        monkeypatch.delenv("ASCEND_OPP_PATH", raising=False)
    return configure


@pytest.mark.parametrize("device_target, native", [("CPU", "cpu"), ("GPU", "cuda"), ("Ascend", "ascend")])
@pytest.mark.parametrize("toolchain_present", [True, False])
@pytest.mark.parametrize("kernel", ["auto", "composed", "custom"])
def test_select_backend_for_every_kernel_and_device(kernel, device_target, native, toolchain_present, toolchains,
                                                    caplog):
    compiler = {"cpu": "g++", "cuda": "nvcc"}.get(native)
    if toolchain_present and compiler and shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed on this machine")
    toolchains(cxx=toolchain_present, nvcc=toolchain_present, ascend_op=toolchain_present)
    backend = select_backend(kernel, device_target)
    expected = {"composed": "composed", "custom": native,
                "auto": native if toolchain_present else "composed"}[kernel]
    assert backend == expected and backend in BACKENDS
    warned = any("composed" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert warned == (kernel == "auto" and not toolchain_present)


def test_select_backend_accepts_any_case_and_rejects_unknown_values():
    assert select_backend("composed", "gpu") == "composed"
    assert select_backend("custom", "ascend") == "ascend"
    with pytest.raises(ValueError, match="evf.kernel"):
        select_backend("fast", "CPU")
    with pytest.raises(ValueError, match="device_target"):
        select_backend("auto", "TPU")


def test_cuda_op_spec_names_the_compiled_library_and_entry_point(monkeypatch, tmp_path):
    monkeypatch.setenv("EVE_MS_KERNEL_CACHE", str(tmp_path))
    spec = kernel_op_spec("cuda", 64, "img_gbpr", 48, beta=0.5, redistribute_ratio=0.25, build=False)
    library, entry = spec.func.rsplit(":", 1)
    assert entry == "EveAllocationCuda" and spec.target == "GPU" and not spec.attrs_as_inputs
    assert Path(library).parent == tmp_path and Path(library).name.startswith("allocation_cuda-")
    assert not Path(library).exists()  # build=False compiles nothing
    reg = spec.reg_info()
    assert reg["target"] == "GPU"
    assert {a["name"]: a["value"] for a in reg["attr"]} == {
        "capacity": 48, "strategy": 2, "beta": 0.5, "redistribute_ratio": 0.25}


def test_ascend_op_spec_matches_the_ascendc_operator_definition():
    spec = kernel_op_spec("ascend", 64, "gbpr", 48, build=False)
    assert spec.func == ASCEND_OP_TYPE and spec.target == "Ascend" and spec.attrs_as_inputs
    assert spec.attr_values() == (48, 1, 1.0, 0.5)
    reg = spec.reg_info()
    assert all("value" not in a for a in reg["attr"])  # aclnn attributes are call arguments
    # generated aclnn APIs take Float attributes as double
    assert [a["type"] for a in reg["attr"]] == ["int", "int", "double", "double"]
    prototype = json.loads((ASCEND_PROJECT / f"{ASCEND_OP_TYPE}.json").read_text())[0]
    assert prototype["op"] == ASCEND_OP_TYPE
    assert [i["name"] for i in reg["inputs"]] == [i["name"] for i in prototype["input_desc"]]
    assert [o["name"] for o in reg["outputs"]] == [o["name"] for o in prototype["output_desc"]]
    assert [a["name"] for a in reg["attr"]] == [a["name"] for a in prototype["attr"]]
    op_host = (ASCEND_PROJECT / "op_host" / "img_gbpr_allocation.cpp").read_text()
    declared = re.findall(r'this->(Input|Output|Attr)\("(\w+)"\)', op_host)
    assert [n for kind, n in declared if kind == "Input"] == [i["name"] for i in reg["inputs"]]
    assert [n for kind, n in declared if kind == "Output"] == [o["name"] for o in reg["outputs"]]
    assert [n for kind, n in declared if kind == "Attr"] == [a["name"] for a in reg["attr"]]


def test_kernel_cache_outside_the_mindspore_aot_white_list_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("EVE_MS_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MS_CUSTOM_AOT_WHITE_LIST", str(tmp_path / "elsewhere"))
    with pytest.raises(KernelBuildError, match="MS_CUSTOM_AOT_WHITE_LIST"):
        kernel_op_spec("cpu", 8, "gbpr", 4, build=False)
    monkeypatch.setenv("MS_CUSTOM_AOT_WHITE_LIST", str(tmp_path))
    assert kernel_op_spec("cpu", 8, "gbpr", 4, build=False).target == "CPU"


@pytest.mark.parametrize("backend, device", [("cuda", "GPU"), ("ascend", "Ascend")])
def test_device_kernels_refuse_to_build_for_another_device(backend, device):
    with pytest.raises(RuntimeError, match=device):
        KernelAllocation(backend, 8, "gbpr", 4)


# ---- build: missing compiler, cache, nvcc ---------------------------------------------------------

def test_missing_compiler_is_a_clear_error_naming_the_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv("EVE_MS_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("EVE_MS_CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(KernelBuildError, match=r"no-such-g\+\+.*not found.*evf.kernel: composed"):
        build_kernel("cpu")
    with pytest.raises(KernelBuildError, match="evf.kernel: composed"):
        KernelAllocation("cpu", 8, "gbpr", 4)


def _counting_compiler(tmp_path):
    """A g++ wrapper that logs each invocation, to count real compilations."""
    log = tmp_path / "compiler.log"
    wrapper = tmp_path / "counting-g++"
    wrapper.write_text(f'#!/bin/sh\necho run >> "{log}"\nexec g++ "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return wrapper, log


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_second_build_reuses_the_cached_library(monkeypatch, tmp_path):
    wrapper, log = _counting_compiler(tmp_path)
    monkeypatch.setenv("EVE_MS_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EVE_MS_CXX", str(wrapper))
    first = build_kernel("cpu")
    inode, mtime = first.stat().st_ino, first.stat().st_mtime_ns
    second = build_kernel("cpu")
    assert second == first == library_path("cpu")
    assert (second.stat().st_ino, second.stat().st_mtime_ns) == (inode, mtime)
    assert log.read_text().count("run") == 1
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary files left behind


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_parallel_builds_do_not_race(tmp_path):
    # build.py runs as a script (stdlib only), so the two builds overlap for real.
    script = REPO / "eve_ms" / "ops" / "kernels" / "build.py"
    env = {**os.environ, "EVE_MS_KERNEL_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, str(script), "cpu", "--force"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert len({out.strip() for out, _ in outputs}) == 1
    libraries = list(tmp_path.iterdir())
    assert [p.suffix for p in libraries] == [".so"]  # one library, no temporary files
    assert ctypes.CDLL(str(libraries[0])).EveAllocateRaw is not None


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: the CUDA kernel cannot be compiled")
def test_cuda_kernel_compiles_with_nvcc():
    # Compile-only (no GPU here). Uses the shared kernel cache: the first run compiles (~30-60 s).
    library = build_kernel("cuda")
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True,
                             check=True).stdout
    entries = ("EveAllocationCuda", "EveAllocationCudaInit", "EveAllocationCudaRaw",
               "EveAllocationCudaRawWorkspaceBytes")
    for entry in entries:
        assert re.search(rf"\b{entry}\b", symbols), entry  # MindSpore's AOT entry points and the raw ones


def test_bench_allocation_times_every_backend_side_by_side():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "benchmarks", "allocation_latency.py")
    spec = importlib.util.spec_from_file_location("eve_allocation_latency", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bench_allocation, format_rows = module.bench_allocation, module.format_rows

    rows = bench_allocation(sizes=(64,), repeats=2, warmup=1, mode="pynative")
    assert {r["backend"] for r in rows} == {"cpu", "composed", "numpy", "cpu-raw"}
    assert all(r["median_ms"] > 0 and r["repeats"] == 2 for r in rows)
    assert all("speedup_vs_composed" in r for r in rows if r["backend"] != "composed")
    assert "composed" in format_rows(rows)


NON_FINITE = np.float32([np.nan, np.inf, -np.inf])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=allocation_cases(), poison_seed=st.integers(0, 2**32 - 1), share=st.sampled_from([0.1, 0.4, 1.0]))
def test_cpu_kernel_drops_non_finite_rows_like_the_reference(case, poison_seed, share):
    rng = np.random.default_rng(poison_seed)
    probs = case["probs"].copy()
    rows = np.flatnonzero(rng.random(len(probs)) < share)
    for row in rows:
        columns = [[0], [1], [0, 1]][rng.integers(3)]
        probs[row, columns] = rng.choice(NON_FINITE, len(columns))
    ref = _assert_matches_reference(**dict(case, probs=probs))
    assert np.all(ref["expert"][rows] == -1)
    assert ref["dropped"] >= int(case["valid"][rows].sum())  # counted, unlike padding


def test_cpu_kernel_drops_non_finite_rows_in_graph_mode(graph_mode):
    rng = np.random.default_rng(13)
    num_tokens = 64
    probs = _probs(rng.random(num_tokens))
    probs[[3, 20], 1] = np.nan
    probs[[5, 40], 0] = np.inf
    probs[50] = -np.inf
    ref = _assert_matches_reference(probs, rng.random(num_tokens) < 0.8, np.ones(num_tokens, bool),
                                    rng.random(num_tokens).astype(np.float32), "img_gbpr", capacity_factor=1.0,
                                    min_capacity=0, beta=1.0, ratio=0.7)
    assert np.all(ref["expert"][[3, 5, 20, 40, 50]] == -1) and ref["redistributed"] > 0
