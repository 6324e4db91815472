"""tools/parity.py: runs the allocation suite on CPU, reports a table, and fails when a backend is wrong;
the GPU path (CUDA kernel through PyTorch) refuses cleanly without a GPU and marshals its calls right."""
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def test_cpu_suite_passes_for_the_composed_ops_and_the_cpu_kernel(parity, capsys, tmp_path):
    out_json = tmp_path / "parity.json"
    # allocation rows only: the model-cell rows are checked in tests/convert/test_parity_cases.py
    status = parity.main(["--device_target", "CPU", "--no-model-cases", "--json", str(out_json)])
    output = capsys.readouterr().out
    assert status == 0, output
    rows = parity.read_table(output)
    suite = [case.name for case in parity._allocation_suite()]
    assert len(suite) >= 15 and {"img_gbpr/T1000-ties", "gbpr/T32-all-padding", "img_gbpr/T512-cap-below-demand",
                                  "img_gbpr/T512-cap-above-demand", "img_gbpr/T4096-mixed"} <= set(suite)
    for strategy in ("random", "gbpr", "img_gbpr"):  # stage-3 batch sizes for every strategy
        assert {16384, 65536} <= {c.num_tokens for c in parity._allocation_suite() if c.strategy == strategy}
    for name in suite:
        assert rows[(name, "composed")] == "PASS" and rows[(name, "cpu")] == "PASS"
    report = json.loads(out_json.read_text())
    assert report["summary"]["failed"] == 0 and report["summary"]["passed"] == 2 * len(suite)
    assert {r["backend"] for r in report["rows"] if r["status"] == "PASS"} == {"composed", "cpu"}


def test_a_wrong_backend_makes_the_harness_fail(parity, capsys):
    def off_by_one_slot(case, device_target):
        def allocate(probs, is_image, valid, noise):
            expert, slot, counts = case.reference(probs, is_image, valid, noise)
            slot = slot.copy()
            slot[np.argmax(slot)] += 1  # one token in the wrong slot
            return expert, slot, counts
        return allocate

    parity.register_allocation_backend("off_by_one", off_by_one_slot)
    status = parity.main(["--device_target", "CPU", "--backends", "composed,off_by_one", "--cases", "/T64$",
                          "--no-model-cases"])
    output = capsys.readouterr().out
    assert status == 1
    rows = parity.read_table(output)
    assert rows[("gbpr/T64", "off_by_one")] == "FAIL" and rows[("gbpr/T64", "composed")] == "PASS"
    assert "slot: 1 differ" in output


def test_a_crashing_backend_is_a_failure_not_a_crash(parity, capsys):
    def crashing(case, device_target):
        def allocate(*inputs):
            raise RuntimeError("kernel exploded")
        return allocate

    parity.register_allocation_backend("crashing", crashing)
    status = parity.main(["--device_target", "CPU", "--backends", "crashing", "--cases", "^gbpr/T64$",
                          "--no-model-cases"])
    assert status == 1
    assert "kernel exploded" in capsys.readouterr().out


@dataclasses.dataclass
class _ModelCase:
    name: str
    requires: tuple
    error: float

    def run(self, device_target):
        return [("eve_ms-vs-torch", self.error, 1e-5)]


def test_model_cases_plug_in_and_are_skipped_without_their_requirements(parity, capsys):
    parity.register_case(_ModelCase("cells/needs-missing-package", ("no_such_package_for_parity",), 0.0))
    parity.register_case(_ModelCase("cells/within-tolerance", ("numpy",), 1e-7))
    status = parity.main(["--device_target", "CPU", "--cases", "^cells/"])
    output = capsys.readouterr().out
    assert status == 0
    rows = parity.read_table(output)
    assert rows[("cells/needs-missing-package", "-")] == "SKIP" and "no_such_package_for_parity not installed" in output
    assert rows[("cells/within-tolerance", "eve_ms-vs-torch")] == "PASS"

    parity.register_case(_ModelCase("cells/out-of-tolerance", ("numpy",), 1e-3))
    assert parity.main(["--device_target", "CPU", "--cases", "^cells/out"]) == 1


def test_unknown_case_filter_is_a_usage_error(parity, capsys):
    assert parity.main(["--device_target", "CPU", "--cases", "no-case-has-this-name"]) == 2
    assert "no parity case matches" in capsys.readouterr().err


# ---- GPU path: the CUDA kernel through PyTorch, without MindSpore -------------------------------------------

REPO = Path(__file__).resolve().parents[2]
KERNELS = REPO / "eve_ms" / "ops" / "kernels"

# The raw CUDA entry points' C signature, implemented on host memory by the CPU kernel: lets the
# ctypes/torch caller (tools/cuda_raw.py) be checked where there is no GPU.
HOST_SHIM = r"""
#include <cstddef>
#include "allocation_cpu.cc"
extern "C" size_t EveAllocationCudaRawWorkspaceBytes(int64_t num_tokens) { return num_tokens > 0 ? 512 : 0; }
extern "C" int EveAllocationCudaRaw(int64_t num_tokens, const float *probs, const bool *is_image, const bool *valid,
                                    const float *noise, int64_t capacity, int64_t strategy, float beta, float ratio,
                                    int32_t *expert, int32_t *slot, int32_t *counts, void *workspace,
                                    size_t workspace_bytes, void *stream) {
  if (workspace == nullptr || workspace_bytes < 512 || stream != nullptr) return 9;
  return EveAllocateRaw(num_tokens, probs, reinterpret_cast<const uint8_t *>(is_image),
                        reinterpret_cast<const uint8_t *>(valid), noise, capacity, strategy, beta, ratio, expert, slot,
                        counts);
}
"""


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"eve_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_cuda_raw_caller_passes_tensors_attributes_and_workspace_in_the_kernel_s_order(tmp_path, parity):
    (tmp_path / "shim.cc").write_text(HOST_SHIM)
    library = tmp_path / "shim.so"
    subprocess.run(["g++", "-std=c++17", "-O1", "-shared", "-fPIC", f"-I{KERNELS}", "-o", str(library),
                    str(tmp_path / "shim.cc")], check=True, capture_output=True)
    allocation = _load_tool("cuda_raw").CudaRawAllocation(library, device="cpu")
    for case in parity._allocation_suite():
        if case.num_tokens not in (1000, 4096):
            continue
        inputs = case.inputs()
        got = allocation(*inputs, case.capacity, case.strategy, case.beta, case.redistribute_ratio)
        for have, want in zip(got, case.reference(*inputs)):
            np.testing.assert_array_equal(have, want)
            assert have.dtype == np.int32


def test_gpu_target_without_a_gpu_exits_3_with_one_line():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU even on a machine that has one
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "parity.py"), "--device_target", "GPU"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "GPU" in lines[0] and "CUDA" in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_gpu_backends_stay_off_other_targets_and_mindspore_on_gpu(parity, capsys):
    status = parity.main(["--device_target", "CPU", "--backends", "cuda-raw", "--cases", "^gbpr/T64$",
                          "--no-model-cases"])
    assert status == 0
    rows = parity.read_table(capsys.readouterr().out)
    assert rows[("gbpr/T64", "cuda-raw")] == "SKIP"
    case = next(c for c in parity._allocation_suite() if c.name == "gbpr/T64")
    with pytest.raises(parity.BackendUnavailable, match="no GPU backend"):
        parity.ALLOCATION_BACKENDS["composed"](case, "GPU")
    assert parity.DEFAULT_BACKENDS["GPU"] == ["cuda-raw"] and parity.MINDSPORE_TARGET["GPU"] == "CPU"


def test_model_references_move_to_cuda_with_tf32_off_and_back():
    torch = pytest.importorskip("torch")
    import parity_cases  # tools/parity_cases.py

    assert parity_cases.reference_device("GPU") == "cuda" and parity_cases.reference_device("CPU") == "cpu"
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    with parity_cases._references_on("cuda"):
        assert parity_cases._device().type == "cuda"
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.backends.cudnn.allow_tf32 and parity_cases._device().type == "cpu"
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_cases_can_carry_non_finite_rows_that_the_reference_drops(parity):
    case = parity.AllocationCase("img_gbpr/T4096-non-finite", 4096, "img_gbpr", capacity_factor=1.0,
                                 non_finite_share=0.02, seed=19)
    probs, is_image, valid, noise = case.inputs()
    bad = valid & ~np.isfinite(probs).all(axis=1)
    expert, slot, counts = case.reference(probs, is_image, valid, noise)
    assert bad.sum() > 40 and (expert[bad] == -1).all() and (slot[bad] == -1).all() and counts[2] >= bad.sum()
    plain = dataclasses.replace(case, non_finite_share=0.0).inputs()
    np.testing.assert_array_equal(plain[1], is_image)  # the other inputs are drawn as without the option
    assert np.isfinite(plain[0]).all()
