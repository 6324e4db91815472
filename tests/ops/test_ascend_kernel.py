"""The AscendC operator (ascend_kernels/img_gbpr) checked on the host, without CANN.

The kernel and op_host sources are compiled with g++ against host stand-ins of the AscendC API and
of CANN's registration headers (ascend_kernels/img_gbpr/host_check). The tiling function decides
the launch as the framework would; every vector core then runs the kernel on a model that honours
SyncAll as a barrier, the real UB size and the ordering rules between pipes (see host_check/sim.h).
Results are compared with the numpy reference. What stays for an NPU: CANN compiling the sources,
timing, and the vector unit's subnormal handling.
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eve_ms.ops.kernels import ASCEND_OP_TYPE, kernel_op_spec
from eve_ms.ops.token_allocation import STRATEGIES, allocate_reference, compute_capacity

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "ascend_kernels" / "img_gbpr"
TIE_VALUES = np.array([0.0, 0.25, 0.5, 0.75, 1.0], np.float32)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")


def _load_host_check(folder: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, folder / "host_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


HC = _load_host_check(PROJECT / "host_check", "img_gbpr_host_check")
sys.path.insert(0, str(PROJECT / "host_check"))  # cost_model.py imports host_check by name


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    return HC.HostCheck(HC.build(tmp_path_factory.mktemp("ascend_host_check")))


def _probs(p_vision):
    p1 = np.asarray(p_vision, np.float32)
    return np.stack([1 - p1, p1], axis=1).astype(np.float32)


def _case(rng, num_tokens, *, ties=False, image_share=0.6, valid_share=0.9, non_finite_share=0.0,
          signed_zeros=False):
    if ties:
        p_vision, noise = rng.choice(TIE_VALUES, num_tokens), rng.choice(TIE_VALUES[:-1], num_tokens)
    else:
        p_vision, noise = rng.random(num_tokens), rng.random(num_tokens)
    probs = _probs(p_vision)
    if signed_zeros:  # -0.0 compares equal to +0.0: the keys must tie them
        noise = np.where(noise == 0, np.copysign(0.0, rng.choice([-1.0, 1.0], num_tokens)), noise)
        zero_rows = rng.random(num_tokens) < 0.1
        probs[zero_rows] = np.copysign(0.0, rng.choice([-1.0, 1.0], (int(zero_rows.sum()), 2)))
    if non_finite_share:
        bad = np.flatnonzero(rng.random(num_tokens) < non_finite_share)
        probs[bad, rng.integers(0, 2, bad.size)] = rng.choice([np.nan, np.inf, -np.inf], bad.size)
    return (probs, rng.random(num_tokens) < image_share, rng.random(num_tokens) < valid_share,
            noise.astype(np.float32))


def _check(host, inputs, strategy, capacity_factor=1.0, min_capacity=4, beta=1.0, ratio=0.5, **machine):
    probs, is_image, valid, noise = inputs
    ref = allocate_reference(probs, is_image, valid, noise, strategy=strategy, capacity_factor=capacity_factor,
                             min_capacity=min_capacity, beta=beta, redistribute_ratio=ratio)
    run = host.run(probs, is_image, valid, noise, ref["capacity"], strategy, beta, ratio, **machine)
    np.testing.assert_array_equal(run.expert, ref["expert"])
    np.testing.assert_array_equal(run.slot, ref["slot"])
    np.testing.assert_array_equal(run.counts, [*ref["kept"], ref["dropped"], ref["redistributed"]])
    assert run.aiv_only and run.blocks == run.tiling.block_dim
    assert run.ub_peak <= machine.get("ub_bytes", HC.ATLAS_A2_UB_BYTES)
    assert run.ub_peak == run.tiling.fields["ubBytes"]  # the tiling's UB plan is what the kernel allocates
    return ref, run


# ---- the kernel on the modelled cores ------------------------------------------------------------------


def test_small_cases_on_one_to_eight_cores_match_the_reference(host):
    rng = np.random.default_rng(2024)
    redistributed = multi_block = 0
    for trial in range(48):
        num_tokens = int(rng.integers(1, 4200)) if trial % 4 else int(rng.integers(1, 200))
        strategy = STRATEGIES[trial % 3]
        inputs = _case(rng, num_tokens, ties=bool(trial % 2), image_share=(0.05, 0.5, 0.95)[trial % 3],
                       valid_share=(0.0, 0.5, 0.9, 1.0)[trial % 4], signed_zeros=trial % 5 == 0)
        ref, run = _check(host, inputs, strategy, capacity_factor=(0.1, 0.5, 1.0, 1.5, 3.0)[trial % 5],
                          min_capacity=(0, 1, 4)[trial % 3], beta=(0.0, 0.25, 1.0, 3.0)[trial % 4],
                          ratio=(0.0, 0.3, 0.5, 1.0)[(trial // 4) % 4], aiv_cores=(1, 3, 8)[trial % 3])
        redistributed += int(ref["redistributed"])
        multi_block += run.blocks > 1
    assert redistributed > 0 and multi_block > 10  # the cases exercise redistribution and several cores


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_non_finite_rows_are_dropped_counted_and_never_offered(host, strategy):
    rng = np.random.default_rng(5)
    inputs = _case(rng, 3000, image_share=0.85, non_finite_share=0.05)
    ref, _ = _check(host, inputs, strategy, capacity_factor=0.8, ratio=1.0, aiv_cores=6)
    probs, _, valid, _ = inputs
    bad = valid & ~np.isfinite(probs).all(axis=1)
    assert bad.sum() > 100 and (ref["expert"][bad] == -1).all()
    assert ref["dropped"] >= bad.sum()


def test_input_tiles_and_histogram_chunks_split_a_core_s_work(host):
    # 4 cores for 8000 tokens: 2048 tokens a core in 4 input tiles; 48 cores for 9000: 18 rows in 3 chunks
    rng = np.random.default_rng(8)
    _, run = _check(host, _case(rng, 8000, ties=True), "img_gbpr", aiv_cores=4)
    assert run.tiling.fields["rangeLen"] > run.tiling.fields["tileLen"]
    _, run = _check(host, _case(rng, 9000, signed_zeros=True), "gbpr", capacity_factor=0.7)
    assert run.blocks > run.tiling.fields["chunkRows"]


@pytest.mark.parametrize("num_tokens, strategy, kind", [
    (16384, "img_gbpr", "ties"),
    (16384, "random", "signed-zeros"),
    (65536, "img_gbpr", "non-finite"),
    (65536, "gbpr", "ties"),
])
def test_large_batches_match_the_reference(host, num_tokens, strategy, kind):
    rng = np.random.default_rng(num_tokens + len(kind))
    inputs = _case(rng, num_tokens, ties=kind == "ties", signed_zeros=kind == "signed-zeros",
                   non_finite_share=0.01 if kind == "non-finite" else 0.0, image_share=0.75)
    ref, run = _check(host, inputs, strategy, capacity_factor=0.8, ratio=0.6)
    assert run.blocks >= 32 and run.sync_alls >= 3
    assert ref["dropped"] > 0
    # Every core's work follows its own range, not T: scalar UB accesses of the busiest core stay within
    # ~12 a token and ~6 a bucket per pass, and it writes global memory in bucket runs (at most one
    # DMA per bucket and interval), never one token at a time.
    counter = {name: i for i, name in enumerate(HC.COUNTERS)}
    scalar = run.stats[..., counter["scalar_reads"]] + run.stats[..., counter["scalar_writes"]]
    range_len = run.tiling.fields["rangeLen"]
    assert scalar.sum(axis=0).max() <= 64 * range_len + 48 * 512
    assert run.stats[..., counter["mte3_count"]].max() <= 512 + 8


# ---- tiling ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_tokens", [1, 100, 4096, 32768, 131072])
def test_tiling_splits_tokens_over_cores_within_the_unified_buffer(host, num_tokens):
    tiling = host.tiling(num_tokens, compute_capacity(num_tokens, 1.5, 4))
    f = tiling.fields
    assert tiling.status == 0 and tiling.schedule_mode == 1  # batch mode: SyncAll needs every core started
    assert tiling.block_dim == f["blockNum"] <= HC.ATLAS_A2_AIV_CORES
    assert f["rangeLen"] % 128 == 0
    assert (f["blockNum"] - 1) * f["rangeLen"] < num_tokens <= f["blockNum"] * f["rangeLen"]  # no idle core
    assert f["tileLen"] <= f["rangeLen"] and f["tileLen"] % 128 == 0
    assert f["ubBytes"] <= HC.ATLAS_A2_UB_BYTES
    # user workspace: flags, two rounds of rows, two record arrays of 8 bytes a token
    assert f["histOffset"] >= 32 * f["blockNum"] and f["recordOffsetA"] >= f["histOffset"] + 2 * f["blockNum"] * 2304
    assert f["recordOffsetB"] >= f["recordOffsetA"] + 8 * num_tokens
    assert f["userWorkspaceBytes"] >= f["recordOffsetB"] + 8 * num_tokens
    assert tiling.workspace_bytes == f["userWorkspaceBytes"] + (1 << 16)  # + the platform's system workspace
    if num_tokens >= 32768:
        assert f["blockNum"] >= 40  # large batches use (nearly) every vector core


def test_tiling_refuses_what_does_not_fit_and_bad_attributes(host, capfd):
    assert host.tiling(131072, 65536, aiv_cores=20).status != 0  # 128k tokens need more than 20 cores' UB
    assert "bytes of UB per core" in capfd.readouterr().err
    assert host.tiling(131072, 65536, aiv_cores=40).status == 0
    assert host.tiling(100, 101).status != 0  # capacity above T
    assert host.tiling(100, 50, strategy=3).status != 0
    assert host.tiling(100, 50, ratio=1.5).status != 0


def test_operator_definition_and_shape_inference(host):
    (op,) = host.op_def()
    prototype = json.loads((PROJECT / f"{ASCEND_OP_TYPE}.json").read_text())[0]
    assert op["op"] == prototype["op"] == ASCEND_OP_TYPE
    assert [i["name"] for i in op["inputs"]] == [i["name"] for i in prototype["input_desc"]]
    assert [o["name"] for o in op["outputs"]] == [o["name"] for o in prototype["output_desc"]]
    assert [a["name"] for a in op["attrs"]] == [a["name"] for a in prototype["attr"]]
    reg = kernel_op_spec("ascend", 64, "gbpr", 48, build=False).reg_info()
    assert [i["name"] for i in op["inputs"]] == [i["name"] for i in reg["inputs"]]
    assert all(p["required"] and len(p["formats"]) == 1 for p in op["inputs"] + op["outputs"])
    assert op["tiling"] and op["infer_shape"] and op["infer_dtype"] and op["socs"] == ["ascend910b"]
    assert "UnknownShapeFormat" not in (PROJECT / "op_host" / "img_gbpr_allocation.cpp").read_text()
    assert host.infer_shape(10, 2, 10) == [10, 10, 4]
    assert host.infer_shape(10, 3, 10) is None and host.infer_shape(10, 2, 9) is None


def test_kernel_is_declared_vector_only():
    source = (PROJECT / "op_kernel" / "img_gbpr_allocation.cpp").read_text()
    assert "KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY)" in source
    assert "SetBlockDim(1)" not in (PROJECT / "op_host" / "img_gbpr_allocation.cpp").read_text()


# ---- the model catches what hardware would get wrong ------------------------------------------------------

MUTATIONS = {
    "a vector read of a DMA'd tile without MTE2_V": (
        "        WaitPipe<HardEvent::MTE2_V>();\n\n        // P[:, 0]", "\n        // P[:, 0]",
        "without a MTE2_V sync"),
    "one core skipping a SyncAll": (
        "        AllCoresReach();  // every core's records",
        "        if (blockIdx_ != 1) AllCoresReach();  // every core's records", "race"),
    "SyncAll flags left unzeroed": ("        ZeroSyncFlags();\n", "", "not zeroed"),
}


@pytest.fixture(scope="module")
def mutant_builds(tmp_path_factory):
    return tmp_path_factory.mktemp("mutant_builds")  # shared: the unchanged tiling object compiles once


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_the_host_model_rejects_a_broken_kernel(tmp_path, mutant_builds, name):
    before, after, message = MUTATIONS[name]
    copy = tmp_path / "img_gbpr"
    shutil.copytree(PROJECT, copy, ignore=shutil.ignore_patterns("build_out"))
    kernel = copy / "op_kernel" / "img_gbpr_allocation.cpp"
    source = kernel.read_text()
    assert before in source
    kernel.write_text(source.replace(before, after, 1))
    module_name = "img_gbpr_host_check_" + re.sub(r"\W", "_", name)
    mutant = _load_host_check(copy / "host_check", module_name)
    host = mutant.HostCheck(mutant.build(mutant_builds, optimize="-O0"))
    inputs = _case(np.random.default_rng(1), 3000)
    with pytest.raises(mutant.HostCheckError, match=message):
        host.run(*inputs, compute_capacity(3000, 1.0, 4), "img_gbpr")


# ---- build script ---------------------------------------------------------------------------------------


def test_build_script_without_cann_says_what_is_missing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASCEND")}
    proc = subprocess.run(["bash", str(PROJECT / "build.sh")], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert "ASCEND_HOME_PATH" in proc.stderr and "CANN" in proc.stderr and "9.0.0" in proc.stderr
    assert not (PROJECT / "build_out").exists()


@pytest.mark.parametrize("installed, accepted", [("8.3.RC1", False), ("9.0.0", True)])
def test_build_script_insists_on_the_pinned_cann_version(tmp_path, installed, accepted):
    cann = tmp_path / "cann"
    (cann / "compiler").mkdir(parents=True)
    (cann / "compiler" / "version.info").write_text(f"Version={installed}\nversion_dir=cann\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ASCEND")}, "ASCEND_HOME_PATH": str(cann),
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(PROJECT / "build.sh"), "--build-dir", str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0  # no msopgen here either way
    if accepted:
        assert "msopgen not found" in proc.stderr
    else:
        assert "CANN 9.0.0" in proc.stderr and "8.3.RC1" in proc.stderr and "--any-cann" in proc.stderr
    proc = subprocess.run(["bash", str(PROJECT / "build.sh"), "--any-cann", "--build-dir", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert "msopgen not found" in proc.stderr  # the override skips only the version check


def test_cost_model_reproduces_the_documented_prediction_at_32k(host):
    cost_model = importlib.import_module("cost_model")
    inputs = cost_model.stage3_inputs(32768)
    ref = allocate_reference(*inputs, strategy="img_gbpr", capacity_factor=1.5)
    run = host.run(*inputs, ref["capacity"], "img_gbpr")
    predicted = cost_model.predict_us(run)["total_us"]
    doc = (REPO / "docs" / "ascend_cost_model.md").read_text()
    documented = float(re.search(r"img_gbpr, C = 1\.5 .*?\*\*(\d+) µs\*\*", doc).group(1))
    assert abs(predicted - documented) <= 0.02 * documented, (predicted, documented)
    assert predicted > cost_model.Params().sync_us * run.sync_alls  # the work is counted, not only the waits
