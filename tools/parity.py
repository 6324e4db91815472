"""Parity harness: every backend must reproduce the reference, case by case.

    python tools/parity.py --device_target CPU|GPU|Ascend [--json OUT] [--cases REGEX]
                           [--backends composed,cpu] [--mode pynative|graph] [--list]

Token allocation cases (DESIGN section 3, T from 1 to 65536) compare the numpy reference
exactly, on expert, slot and counts, with the backends of the device: CPU -> the MindSpore
composed ops and the C++ kernel; Ascend -> the composed ops and the AscendC operator; GPU ->
`cuda-raw`, the CUDA kernel called through ctypes on PyTorch CUDA tensors (tools/cuda_raw.py),
because MindSpore 2.9 has no GPU backend. Model cases compare eve-ms cells with their PyTorch /
Hugging Face counterparts (tools/parity_cases.py); with GPU the references run on CUDA
and the eve-ms cells on MindSpore's CPU backend. Cases whose requirements (torch, ...) are not
installed are skipped with a message. The table lists case, backend, max error, tolerance and
PASS / FAIL / SKIP; the exit status is 1 when any row fails, 2 for bad usage, 3 when the device
is not there (GPU: no CUDA device visible to PyTorch).

With `--device_target Ascend` the fused-operator cases of tools/fused_parity.py run too: each of
MindSpore's fused Ascend operators that `llm.fused_ops` selects (flash attention and its gradient,
RMSNorm, rotary, SwiGLU; FastGeLU; a whole LLM), in bfloat16, against the composed path in float32, with the
bfloat16 tolerances stated there. They are not registered for other targets (those have no such ops).

Registries, so cases and backends plug in without editing this file:
- `register_case(case)`: any object with `name`, `requires` (module names) and
  `run(device_target) -> iterable of (backend, max_error, tolerance[, detail])`.
  tools/parity_cases.py provides such objects from a `parity_cases()` function.
- `register_allocation_backend(name, factory)`: `factory(case, device_target)` returns
  `allocate(probs, is_image, valid, noise) -> (expert, slot, counts)` on numpy arrays.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterable

REPO = Path(__file__).resolve().parents[1]
for _path in (str(REPO), str(REPO / "tools")):  # eve_ms, and the case modules beside this file
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402

from eve_ms.ops.token_allocation import allocate_reference, compute_capacity  # noqa: E402

MODEL_CASE_MODULE = "parity_cases"  # tools/parity_cases.py
NATIVE_BACKEND = {"CPU": "cpu", "GPU": "cuda", "Ascend": "ascend"}
DEFAULT_BACKENDS = {"CPU": ["composed", "cpu"], "GPU": ["cuda-raw"], "Ascend": ["composed", "ascend"]}
# MindSpore's device target per harness target: MindSpore 2.9 has no GPU backend, so on GPU the
# eve-ms cells run on its CPU backend while the PyTorch references and the CUDA kernel use the GPU.
MINDSPORE_TARGET = {"CPU": "CPU", "GPU": "CPU", "Ascend": "Ascend"}
NO_DEVICE_STATUS = 3


@dataclasses.dataclass
class Row:
    case: str
    backend: str
    max_error: float | None
    tolerance: float | None
    status: str  # PASS | FAIL | SKIP
    detail: str = ""


# ---- allocation cases -----------------------------------------------------------------------------

TIE_VALUES = np.array([0.0, 0.25, 0.5, 0.75, 1.0], np.float32)


@dataclasses.dataclass(frozen=True)
class AllocationCase:
    """One allocation problem: T token slots, the strategy and its parameters, and how inputs are drawn."""

    name: str
    num_tokens: int
    strategy: str
    capacity_factor: float = 1.5
    min_capacity: int = 4
    beta: float = 1.0
    redistribute_ratio: float = 0.5
    image_share: float = 0.5
    valid_share: float = 0.9
    ties: bool = False
    non_finite_share: float = 0.0  # valid or not, these rows get a NaN or +-inf (dropped by every backend)
    seed: int = 0
    requires: tuple = ()

    @property
    def capacity(self) -> int:
        return compute_capacity(self.num_tokens, self.capacity_factor, self.min_capacity)

    def inputs(self):
        rng = np.random.default_rng(self.seed)
        n = self.num_tokens
        if self.ties:
            p_vision, noise = rng.choice(TIE_VALUES, n), rng.choice(TIE_VALUES[:-1], n)
        else:
            p_vision, noise = rng.random(n), rng.random(n)
        p_vision = p_vision.astype(np.float32)
        probs = np.stack([1 - p_vision, p_vision], axis=1).astype(np.float32)
        is_image, valid = rng.random(n) < self.image_share, rng.random(n) < self.valid_share
        if self.non_finite_share:
            rows = np.flatnonzero(rng.random(n) < self.non_finite_share)
            probs[rows, rng.integers(0, 2, rows.size)] = rng.choice([np.nan, np.inf, -np.inf], rows.size)
        return probs, is_image, valid, noise.astype(np.float32)

    def reference(self, probs, is_image, valid, noise):
        out = allocate_reference(probs, is_image, valid, noise, strategy=self.strategy,
                                 capacity_factor=self.capacity_factor, min_capacity=self.min_capacity,
                                 beta=self.beta, redistribute_ratio=self.redistribute_ratio)
        return out["expert"], out["slot"], np.array([*out["kept"], out["dropped"], out["redistributed"]], np.int32)

    def run(self, device_target: str, backends: Iterable[str]) -> list[Row]:
        inputs = self.inputs()
        expected = self.reference(*inputs)
        rows = []
        for backend in backends:
            factory = ALLOCATION_BACKENDS.get(backend)
            if factory is None:
                rows.append(Row(self.name, backend, None, 0.0, "FAIL", f"unknown backend {backend!r}"))
                continue
            try:
                allocate = factory(self, device_target)
            except BackendUnavailable as err:
                rows.append(Row(self.name, backend, None, 0.0, "SKIP", str(err)))
                continue
            try:
                got = [np.asarray(x) for x in allocate(*inputs)]
            except Exception as err:  # a crashing backend is a failing backend
                rows.append(Row(self.name, backend, None, 0.0, "FAIL", f"{type(err).__name__}: {err}"))
                continue
            rows.append(_compare_allocation(self.name, backend, expected, got))
        return rows


def _compare_allocation(case, backend, expected, got) -> Row:
    names = ("expert", "slot", "counts")
    errors, details = [], []
    for name, want, have in zip(names, expected, got):
        if have.shape != want.shape:
            return Row(case, backend, None, 0.0, "FAIL", f"{name} shape {have.shape} != {want.shape}")
        diff = np.abs(have.astype(np.int64) - want.astype(np.int64))
        errors.append(int(diff.max(initial=0)))
        if diff.any():
            details.append(f"{name}: {int(np.count_nonzero(diff))} differ")
    max_error = float(max(errors))
    return Row(case, backend, max_error, 0.0, "PASS" if max_error == 0 else "FAIL", "; ".join(details))


def _allocation_suite() -> list[AllocationCase]:
    cases = []
    for strategy in ("random", "gbpr", "img_gbpr"):
        cases += [
            AllocationCase(f"{strategy}/T64", 64, strategy, seed=1),
            AllocationCase(f"{strategy}/T1000-ties", 1000, strategy, ties=True, seed=2),
            AllocationCase(f"{strategy}/T256-padding80", 256, strategy, valid_share=0.2, seed=3),
            AllocationCase(f"{strategy}/T512-cap-below-demand", 512, strategy, capacity_factor=0.25, seed=4),
            AllocationCase(f"{strategy}/T512-cap-above-demand", 512, strategy, capacity_factor=3.0, seed=5),
        ]
    cases += [
        AllocationCase("gbpr/T1", 1, "gbpr", min_capacity=0, valid_share=1.0, seed=6),
        AllocationCase("gbpr/T32-all-padding", 32, "gbpr", valid_share=0.0, seed=7),
        AllocationCase("img_gbpr/T512-skewed-W1", 512, "img_gbpr", capacity_factor=1.0, image_share=0.9,
                       redistribute_ratio=1.0, seed=8),
        AllocationCase("img_gbpr/T512-skewed-W0", 512, "img_gbpr", capacity_factor=1.0, image_share=0.9,
                       redistribute_ratio=0.0, seed=9),
        AllocationCase("img_gbpr/T512-beta0-ties", 512, "img_gbpr", capacity_factor=0.75, beta=0.0, ties=True,
                       seed=10),
        AllocationCase("img_gbpr/T512-beta2.5-text-heavy", 512, "img_gbpr", capacity_factor=1.0, beta=2.5,
                       image_share=0.1, seed=11),
        AllocationCase("img_gbpr/T4096-mixed", 4096, "img_gbpr", capacity_factor=1.0, image_share=0.7,
                       redistribute_ratio=0.6, seed=12),
        # NaN / inf router rows: dropped and counted by every backend (one policy, see token_allocation)
        AllocationCase("img_gbpr/T4096-non-finite", 4096, "img_gbpr", capacity_factor=1.0, non_finite_share=0.02,
                       seed=19),
        AllocationCase("random/T512-non-finite", 512, "random", non_finite_share=0.05, seed=20),
        AllocationCase("gbpr/T512-non-finite", 512, "gbpr", capacity_factor=0.75, non_finite_share=0.05, seed=21),
    ]
    # Sizes of a stage-3 batch (16 x 2048 = 32k tokens per device): the kernels' many-core paths.
    cases += [
        AllocationCase("random/T16384", 16384, "random", capacity_factor=0.8, seed=13),
        AllocationCase("gbpr/T16384-ties", 16384, "gbpr", ties=True, seed=14),
        AllocationCase("img_gbpr/T16384-skewed", 16384, "img_gbpr", capacity_factor=1.0, image_share=0.8,
                       redistribute_ratio=0.6, seed=15),
        AllocationCase("random/T65536-ties", 65536, "random", capacity_factor=1.0, ties=True, seed=16),
        AllocationCase("gbpr/T65536", 65536, "gbpr", capacity_factor=0.8, seed=17),
        AllocationCase("img_gbpr/T65536-mixed", 65536, "img_gbpr", capacity_factor=1.0, image_share=0.7,
                       redistribute_ratio=0.6, seed=18),
    ]
    return cases


# ---- allocation backends --------------------------------------------------------------------------

class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine (missing toolchain or device); its rows are skipped."""


AllocationFactory = Callable[[AllocationCase, str], Callable]
ALLOCATION_BACKENDS: dict[str, AllocationFactory] = {}


def register_allocation_backend(name: str, factory: AllocationFactory) -> None:
    ALLOCATION_BACKENDS[name] = factory


def _mindspore_allocator(backend: str) -> AllocationFactory:
    def factory(case: AllocationCase, device_target: str):
        import mindspore as ms

        from eve_ms.ops import kernels

        if device_target == "GPU":
            raise BackendUnavailable("MindSpore 2.9 has no GPU backend; the cuda-raw backend runs the CUDA kernel "
                                     "through PyTorch")
        if backend != "composed":
            if backend not in kernels.BACKENDS:
                raise BackendUnavailable(f"unknown backend {backend}")
            if backend != NATIVE_BACKEND[device_target]:
                raise BackendUnavailable(f"the {backend} kernel does not run on {device_target}")
            if not kernels.native_available(backend):
                raise BackendUnavailable(f"the {backend} kernel's toolchain / operator package is not installed")
        if importlib.util.find_spec("eve_ms.ops.allocator") is not None:
            from eve_ms.ops.allocator import TokenAllocator

            net = TokenAllocator(case.num_tokens, case.strategy, case.capacity_factor, case.min_capacity, case.beta,
                                 case.redistribute_ratio, backend=backend)
        elif backend == "composed":
            raise BackendUnavailable("eve_ms.ops.allocator (the composed ops) is not available")
        else:
            net = kernels.KernelAllocation(backend, case.num_tokens, case.strategy, case.capacity, case.beta,
                                           case.redistribute_ratio)

        def allocate(probs, is_image, valid, noise):
            outputs = net(ms.Tensor(probs), ms.Tensor(is_image), ms.Tensor(valid), ms.Tensor(noise))
            return [o.asnumpy() for o in outputs]

        return allocate

    return factory


for _backend in ("composed", "cpu", "cuda", "ascend"):
    register_allocation_backend(_backend, _mindspore_allocator(_backend))


def gpu_unavailable_reason() -> str | None:
    """Why --device_target GPU cannot run here, or None when PyTorch sees a CUDA device."""
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    import torch

    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)"
    return None


_CUDA_RAW = {}


def _cuda_raw_allocator(case: AllocationCase, device_target: str):
    """The CUDA kernel through its raw entry point on PyTorch CUDA tensors (no MindSpore)."""
    if device_target != "GPU":
        raise BackendUnavailable("cuda-raw runs with --device_target GPU")
    if "allocation" not in _CUDA_RAW:
        from eve_ms.ops.kernels.build import KernelBuildError, build_kernel

        try:
            library = build_kernel("cuda")
        except KernelBuildError as err:
            raise BackendUnavailable(f"the CUDA kernel cannot be built here: {err}") from err
        spec = importlib.util.spec_from_file_location("eve_cuda_raw", Path(__file__).with_name("cuda_raw.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _CUDA_RAW["allocation"] = module.CudaRawAllocation(library, "cuda")
    allocation = _CUDA_RAW["allocation"]

    def allocate(probs, is_image, valid, noise):
        return allocation(probs, is_image, valid, noise, case.capacity, case.strategy, case.beta,
                          case.redistribute_ratio)

    return allocate


register_allocation_backend("cuda-raw", _cuda_raw_allocator)


# ---- case registry --------------------------------------------------------------------------------

CASES: list = []


def register_case(case) -> None:
    """Add a parity case: an object with `name`, `requires` and `run(device_target)`."""
    if any(existing.name == case.name for existing in CASES):
        raise ValueError(f"parity case {case.name!r} is registered twice")
    CASES.append(case)


def _missing_requirements(case) -> list[str]:
    return [m for m in getattr(case, "requires", ()) if importlib.util.find_spec(m) is None]


def _load_model_cases() -> list[Row]:
    """Register the model-cell cases of tools/parity_cases.py; rows saying why when there are none."""
    try:
        found = importlib.util.find_spec(MODEL_CASE_MODULE) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return [Row("model-cells", "-", None, None, "SKIP", f"no model parity cases ({MODEL_CASE_MODULE} not found)")]
    try:
        module = importlib.import_module(MODEL_CASE_MODULE)
        for case in module.parity_cases():
            if all(existing.name != case.name for existing in CASES):
                register_case(case)
    except ImportError as err:  # e.g. the module itself imports torch at top level
        return [Row("model-cells", "-", None, None, "SKIP", f"model parity cases need {err.name or err}: {err}")]
    return []


def _load_fused_cases() -> list[Row]:
    """Register the fused-operator cases (Ascend); a row saying why when they cannot be loaded."""
    try:
        spec = importlib.util.spec_from_file_location("eve_fused_parity", Path(__file__).with_name("fused_parity.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
        spec.loader.exec_module(module)
        for case in module.fused_parity_cases():
            if all(existing.name != case.name for existing in CASES):
                register_case(case)
    except Exception as err:  # an unloadable module is a failure to report, not a silent absence
        return [Row("fused-ops", "-", None, None, "FAIL", f"tools/fused_parity.py: {type(err).__name__}: {err}")]
    return []


def _run_case(case, device_target: str, backends: list[str]) -> list[Row]:
    missing = _missing_requirements(case)
    if missing:
        return [Row(case.name, "-", None, None, "SKIP", f"{', '.join(missing)} not installed")]
    try:
        if isinstance(case, AllocationCase):
            return case.run(device_target, backends)
        rows = []
        for result in case.run(device_target):
            backend, max_error, tolerance, *detail = result
            ok = max_error is not None and math.isfinite(max_error) and max_error <= tolerance
            rows.append(Row(case.name, backend, max_error, tolerance, "PASS" if ok else "FAIL",
                            detail[0] if detail else ""))
        return rows
    except Exception as err:
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        return [Row(case.name, "-", None, None, "FAIL", f"raised {last}")]


# ---- output ---------------------------------------------------------------------------------------

def _fmt(value) -> str:
    if value is None:
        return "-"
    return "0" if value == 0 else f"{value:.3g}"


def format_table(rows: list[Row]) -> str:
    header = ("case", "backend", "max error", "tolerance", "result", "detail")
    body = [(r.case, r.backend, _fmt(r.max_error), _fmt(r.tolerance), r.status, r.detail) for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header) - 1)]
    lines = []
    for line in [header, *body]:
        cells = [str(c).ljust(w) for c, w in zip(line, widths)]
        lines.append("  ".join(cells + [str(line[-1])]).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths) + "  ------")
    return "\n".join(lines)


def read_table(text: str) -> dict:
    """(case, backend) -> PASS | FAIL | SKIP from printed output holding a `format_table` table."""
    rows = {}
    for line in text.splitlines():
        cells = line.split()
        if len(cells) >= 5 and cells[4] in ("PASS", "FAIL", "SKIP"):
            rows[(cells[0], cells[1])] = cells[4]
    return rows


def _parse_args(argv):
    parser = argparse.ArgumentParser(description="Check that every backend reproduces the reference.")
    parser.add_argument("--device_target", "--device-target", default="CPU", choices=sorted(NATIVE_BACKEND))
    parser.add_argument("--json", help="also write the rows and a summary to this JSON file")
    parser.add_argument("--cases", help="only cases whose name matches this regular expression")
    parser.add_argument("--backends", help="allocation backends, comma-separated "
                                           "(default: composed and the device's native kernel)")
    parser.add_argument("--mode", choices=("pynative", "graph"), default="pynative")
    parser.add_argument("--no-model-cases", action="store_true", help="skip the model-cell cases")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    rows: list[Row] = []
    for case in _allocation_suite():
        if all(existing.name != case.name for existing in CASES):
            register_case(case)
    if not args.no_model_cases:
        rows += _load_model_cases()
        if args.device_target == "Ascend":
            rows += _load_fused_cases()
    selected = [c for c in CASES if not args.cases or re.search(args.cases, c.name)]
    if args.list:
        print("\n".join(c.name for c in selected))
        return 0
    if not selected:
        print(f"no parity case matches {args.cases!r}", file=sys.stderr)
        return 2

    if args.device_target == "GPU":
        reason = gpu_unavailable_reason()
        if reason is not None:
            print(f"parity.py: --device_target GPU needs a CUDA device visible to PyTorch: {reason}",
                  file=sys.stderr)
            return NO_DEVICE_STATUS

    from eve_ms.runtime import setup_context

    try:
        setup_context(MINDSPORE_TARGET[args.device_target], mode=args.mode)
    except Exception as err:  # no such device here: say so, fail
        print(f"cannot run on device_target {args.device_target}: {err}", file=sys.stderr)
        return 2
    backends = args.backends.split(",") if args.backends else DEFAULT_BACKENDS[args.device_target]
    for case in selected:
        rows += _run_case(case, args.device_target, backends)

    print(format_table(rows))
    failed = [r for r in rows if r.status == "FAIL"]
    summary = {"device_target": args.device_target, "mode": args.mode, "backends": backends,
               "passed": sum(r.status == "PASS" for r in rows), "failed": len(failed),
               "skipped": sum(r.status == "SKIP" for r in rows)}
    where = " (eve-ms on MindSpore CPU, PyTorch references and CUDA kernel on the GPU)" if (
        args.device_target == "GPU") else ""
    print(f"\n{summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped "
          f"on {args.device_target} ({args.mode}){where}")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": [dataclasses.asdict(r) for r in rows]},
                                              indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
