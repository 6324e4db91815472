"""Python side of the AscendC host check: build the host library and call it.

The library (host_check.cpp + tiling_check.cpp, g++) holds the operator's own sources compiled
against the stand-ins in this folder: op_host's tiling function and operator definition, and
op_kernel's kernel on a model of every vector core (sim.h). `run()` goes through the tiling
function exactly as the framework would and then launches the kernel on `aiv_cores` modelled cores
with `ub_bytes` of Unified Buffer each (Atlas A2 / 910B defaults: 48 and 192 KiB).

Used by tests/ops/test_ascend_kernel.py and docs/ascend_cost_model.py; not part of the package.
"""
from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
# The two translation units and what each one's object depends on.
SOURCES = {
    "host_check.cpp": ("host_check.cpp", "host_check.h", "sim.h", "kernel_operator.h", "register/tilingdata_base.h",
                       "../op_kernel/img_gbpr_allocation.cpp", "../op_host/img_gbpr_allocation_tiling.h"),
    "tiling_check.cpp": ("tiling_check.cpp", "host_check.h", "register/op_def_registry.h",
                         "register/tilingdata_base.h", "tiling/platform/platform_ascendc.h",
                         "../op_host/img_gbpr_allocation.cpp", "../op_host/img_gbpr_allocation_tiling.h"),
}
ATLAS_A2_AIV_CORES = 48
ATLAS_A2_UB_BYTES = 192 * 1024
COUNTERS = ("vec_instr", "vec_bytes", "scalar_reads", "scalar_writes", "mte2_count", "mte2_bytes", "mte3_count",
            "mte3_bytes")
STRATEGY_CODES = {"random": 0, "gbpr": 1, "img_gbpr": 2}


class TilingData(ctypes.Structure):
    _fields_ = [("numTokens", ctypes.c_int64), ("capacity", ctypes.c_int64), ("strategy", ctypes.c_int64),
                ("syncOffset", ctypes.c_uint64), ("histOffset", ctypes.c_uint64), ("recordOffsetA", ctypes.c_uint64),
                ("recordOffsetB", ctypes.c_uint64), ("userWorkspaceBytes", ctypes.c_uint64),
                ("beta", ctypes.c_float), ("ratio", ctypes.c_float), ("blockNum", ctypes.c_uint32),
                ("rangeLen", ctypes.c_uint32), ("tileLen", ctypes.c_uint32), ("chunkRows", ctypes.c_uint32),
                ("ubBytes", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


class TilingReport(ctypes.Structure):
    _fields_ = [("status", ctypes.c_int32), ("blockDim", ctypes.c_uint32), ("scheduleMode", ctypes.c_uint32),
                ("reserved", ctypes.c_uint32), ("workspaceBytes", ctypes.c_uint64), ("tiling", TilingData)]


class RunReport(ctypes.Structure):
    _fields_ = [("tiling", TilingReport), ("blocks", ctypes.c_uint32), ("epochs", ctypes.c_uint32),
                ("syncAlls", ctypes.c_uint32), ("aivOnly", ctypes.c_uint32), ("ubPeak", ctypes.c_uint64),
                ("error", ctypes.c_char * 1024)]


class HostCheckError(RuntimeError):
    """The modelled machine found an error (out of bounds, missing sync, race, hang, UB overflow)."""


@dataclasses.dataclass
class Tiling:
    status: int
    block_dim: int
    schedule_mode: int
    workspace_bytes: int
    fields: dict


@dataclasses.dataclass
class Run:
    expert: np.ndarray
    slot: np.ndarray
    counts: np.ndarray
    tiling: Tiling
    blocks: int
    sync_alls: int
    aiv_only: bool
    ub_peak: int
    stats: np.ndarray  # [SyncAll interval, block, counter], counters as in COUNTERS


def _digest(flags, files) -> str:
    sha = hashlib.sha256(" ".join(flags).encode())
    for name in files:
        sha.update((HERE / name).read_bytes())
    return sha.hexdigest()[:16]


def build(directory: str | os.PathLike | None = None, optimize: str = "-O2") -> Path:
    """Compile the host library and return its path. Objects and library are cached by the hash of
    their sources and flags, so a changed kernel recompiles only the kernel's translation unit."""
    flags = ["-std=c++17", optimize, "-fPIC", "-fno-fast-math", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror",
             f"-I{HERE}", f"-I{PROJECT / 'op_host'}"]
    out_dir = Path(directory or Path(tempfile.gettempdir()) / "eve_ms_ascend_host_check")
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = {src: out_dir / f"{Path(src).stem}-{_digest(flags, deps)}.o" for src, deps in SOURCES.items()}
    library_key = hashlib.sha256(" ".join(o.name for o in objects.values()).encode()).hexdigest()[:16]
    target = out_dir / f"img_gbpr_host-{library_key}.so"
    if target.exists():
        return target
    # missing objects compile in parallel, each to a temporary name moved into place
    pending = {src: obj for src, obj in objects.items() if not obj.exists()}
    procs = {src: subprocess.Popen(["g++", *flags, "-c", "-o", f"{obj}.{os.getpid()}.tmp", str(HERE / src)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for src, obj in pending.items()}
    logs = {src: proc.communicate()[0] for src, proc in procs.items()}
    failed = [src for src, proc in procs.items() if proc.returncode]
    if failed:
        raise subprocess.CalledProcessError(1, "g++", output="\n".join(logs[src] for src in failed))
    for src, obj in pending.items():
        os.replace(f"{obj}.{os.getpid()}.tmp", obj)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    subprocess.run(["g++", "-shared", "-o", str(tmp), *map(str, objects.values()), "-lpthread"], check=True,
                   capture_output=True, text=True)
    os.replace(tmp, target)
    return target


class HostCheck:
    """The loaded host library."""

    def __init__(self, library: str | os.PathLike | None = None):
        self.lib = ctypes.CDLL(str(library or build()))
        self.lib.ImgGbprHostTiling.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_float,
                                               ctypes.c_float, ctypes.c_uint32, ctypes.c_uint64,
                                               ctypes.POINTER(TilingReport)]
        self.lib.ImgGbprHostRun.argtypes = [ctypes.c_int64, *[ctypes.c_void_p] * 4, ctypes.c_int64, ctypes.c_int64,
                                            ctypes.c_float, ctypes.c_float, ctypes.c_uint32, ctypes.c_uint64,
                                            *[ctypes.c_void_p] * 4, ctypes.c_uint64, ctypes.POINTER(RunReport)]
        self.lib.ImgGbprHostOpDef.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        self.lib.ImgGbprHostInferShape.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                                   ctypes.POINTER(ctypes.c_int64)]

    @staticmethod
    def _tiling(report: TilingReport) -> Tiling:
        fields = {name: getattr(report.tiling, name) for name, _ in TilingData._fields_}
        return Tiling(report.status, report.blockDim, report.scheduleMode, report.workspaceBytes, fields)

    def tiling(self, num_tokens: int, capacity: int, strategy: str = "img_gbpr", beta: float = 1.0,
               ratio: float = 0.5, aiv_cores: int = ATLAS_A2_AIV_CORES, ub_bytes: int = ATLAS_A2_UB_BYTES) -> Tiling:
        report = TilingReport()
        self.lib.ImgGbprHostTiling(num_tokens, capacity, STRATEGY_CODES.get(strategy, strategy), beta, ratio,
                                   aiv_cores, ub_bytes, ctypes.byref(report))
        return self._tiling(report)

    def op_def(self) -> list:
        buf = ctypes.create_string_buffer(8192)
        if self.lib.ImgGbprHostOpDef(buf, len(buf)) != 0:
            raise HostCheckError("operator definition does not fit the buffer")
        return json.loads(buf.value.decode())

    def infer_shape(self, rows: int, cols: int, mask_len: int):
        lengths = (ctypes.c_int64 * 3)()
        status = self.lib.ImgGbprHostInferShape(rows, cols, mask_len, lengths)
        return None if status else list(lengths)

    def run(self, probs, is_image, valid, noise, capacity: int, strategy: str, beta: float = 1.0, ratio: float = 0.5,
            aiv_cores: int = ATLAS_A2_AIV_CORES, ub_bytes: int = ATLAS_A2_UB_BYTES, max_epochs: int = 64) -> Run:
        probs = np.ascontiguousarray(probs, np.float32)
        num_tokens = probs.shape[0]
        is_image = np.ascontiguousarray(is_image, np.uint8)
        valid = np.ascontiguousarray(valid, np.uint8)
        noise = np.ascontiguousarray(noise, np.float32)
        expert, slot = np.empty(num_tokens, np.int32), np.empty(num_tokens, np.int32)
        counts = np.empty(4, np.int32)
        stats = np.zeros(max_epochs * aiv_cores * len(COUNTERS), np.uint64)
        report = RunReport()
        ptr = lambda a: ctypes.c_void_p(a.ctypes.data)  # noqa: E731
        status = self.lib.ImgGbprHostRun(num_tokens, ptr(probs), ptr(is_image), ptr(valid), ptr(noise), capacity,
                                         STRATEGY_CODES[strategy], beta, ratio, aiv_cores, ub_bytes, ptr(expert),
                                         ptr(slot), ptr(counts), ptr(stats), stats.size, ctypes.byref(report))
        if status != 0:
            raise HostCheckError(report.error.decode(errors="replace"))
        shape = (report.epochs, report.blocks, len(COUNTERS))
        return Run(expert, slot, counts, self._tiling(report.tiling), report.blocks, report.syncAlls,
                   bool(report.aivOnly), report.ubPeak, stats[:int(np.prod(shape))].reshape(shape))
