"""Compile the native allocation kernels on first use and cache the shared libraries.

A kernel library is named by a hash of everything that shapes it (sources, headers,
compiler, flags), so editing a source or changing the compiler rebuilds it and nothing
else does. Builds go to a temporary file in the cache directory and are moved into place
with an atomic rename: parallel processes may both compile, but none ever loads a
half-written library. Prebuild (e.g. at install time) with `python -m eve_ms.ops.kernels.build`.

Environment:
- `EVE_MS_CXX` (default `g++`), `EVE_MS_NVCC` (default `nvcc`): the compilers.
- `EVE_MS_CUDA_ARCH`: CUDA architectures, e.g. `80` or `80;90` (default: the local GPU's
  compute capability from nvidia-smi, else 80).
- `EVE_MS_KERNEL_CACHE`: cache directory (default `~/.cache/eve_ms/kernels`).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from eve_ms.errors import EveError

logger = logging.getLogger(__name__)

KERNEL_DIR = Path(__file__).resolve().parent
HEADERS = ("aot_extra.h", "allocation_common.h")
FALLBACK_HINT = "set `evf.kernel: composed` in the model config to use the MindSpore composed ops instead"


class KernelBuildError(EveError, RuntimeError):
    """A native kernel could not be built; the message names the fallback."""


@dataclasses.dataclass(frozen=True)
class KernelSource:
    """One kernel library: its source file, the compiler that builds it, its entry point."""

    source: str
    compiler_env: str
    default_compiler: str
    entry: str


KERNELS = {
    "cpu": KernelSource("allocation_cpu.cc", "EVE_MS_CXX", "g++", "EveAllocationCpu"),
    "cuda": KernelSource("allocation_cuda.cu", "EVE_MS_NVCC", "nvcc", "EveAllocationCuda"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("EVE_MS_KERNEL_CACHE") or Path.home() / ".cache" / "eve_ms" / "kernels")


def compiler_for(backend: str) -> str:
    spec = KERNELS[backend]
    return os.environ.get(spec.compiler_env) or spec.default_compiler


def find_compiler(backend: str) -> str | None:
    """Absolute path of the backend's compiler, or None when it is not installed."""
    return shutil.which(compiler_for(backend))


def _cuda_archs() -> list[str]:
    return list(_cuda_archs_for(os.environ.get("EVE_MS_CUDA_ARCH", "")))


@functools.lru_cache(maxsize=None)
def _cuda_archs_for(archs: str) -> tuple[str, ...]:
    """Architectures from the setting, else from the local GPUs (asked once per process)."""
    if not archs:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            archs = ";".join(sorted({line.strip().replace(".", "") for line in out.splitlines() if line.strip()}))
        except (OSError, subprocess.SubprocessError):
            archs = ""
    return tuple(a.strip() for a in (archs or "80").replace(",", ";").split(";") if a.strip())


def compile_flags(backend: str) -> list[str]:
    """Flags for the backend; -D_GLIBCXX_USE_CXX11_ABI=0 matches MindSpore's std::string ABI
    (attribute names cross the boundary). No fast-math: comparisons must match numpy bit for bit."""
    common = ["-O2", "-shared", "-std=c++17", "-D_GLIBCXX_USE_CXX11_ABI=0", f"-I{KERNEL_DIR}"]
    if backend == "cpu":
        return common + ["-fPIC", "-fno-fast-math", "-ffp-contract=off"]
    gencode = []
    for arch in _cuda_archs():
        gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return common + ["-Xcompiler", "-fPIC", "--fmad=false", "-ftz=false", "-prec-div=true"] + gencode


def _digest(backend: str, compiler: str, flags: list[str]) -> str:
    sha = hashlib.sha256()
    for name in (KERNELS[backend].source, *HEADERS):
        sha.update(name.encode())
        sha.update((KERNEL_DIR / name).read_bytes())
    sha.update(compiler.encode())
    sha.update("\0".join(flags).encode())
    return sha.hexdigest()[:20]


def library_path(backend: str) -> Path:
    """Where the cached library for the current sources, compiler and flags lives (built or not)."""
    compiler = find_compiler(backend) or compiler_for(backend)
    stem = Path(KERNELS[backend].source).stem
    return cache_dir() / f"{stem}-{_digest(backend, compiler, compile_flags(backend))}.so"


def build_kernel(backend: str, force: bool = False) -> Path:
    """Path of the compiled library for `backend` ("cpu" | "cuda"), compiling it if not cached."""
    if backend not in KERNELS:
        raise ValueError(f"no native kernel for backend {backend!r}; expected one of {sorted(KERNELS)}")
    compiler = find_compiler(backend)
    if compiler is None:
        spec = KERNELS[backend]
        raise KernelBuildError(
            f"cannot build the {backend} allocation kernel: compiler {compiler_for(backend)!r} not found "
            f"(set {spec.compiler_env} to a working compiler, or {FALLBACK_HINT})")
    target = library_path(backend)
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    cmd = [compiler, *compile_flags(backend), "-o", tmp_name, str(KERNEL_DIR / KERNELS[backend].source)]
    logger.info("compiling %s allocation kernel: %s", backend, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise KernelBuildError(
                f"compiling the {backend} allocation kernel failed ({' '.join(cmd)}):\n"
                f"{proc.stdout}{proc.stderr}\nFix the toolchain, or {FALLBACK_HINT}")
        os.chmod(tmp_name, 0o755)
        os.replace(tmp_name, target)  # atomic: readers see the old state or the whole library
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Prebuild the native allocation kernels into the cache.")
    parser.add_argument("backends", nargs="*", default=["cpu"], choices=sorted(KERNELS))
    parser.add_argument("--force", action="store_true", help="recompile even when cached")
    args = parser.parse_args(argv)
    status = 0
    for backend in args.backends:
        try:
            print(f"{backend}: {build_kernel(backend, force=args.force)}")
        except KernelBuildError as err:
            print(f"{backend}: {err}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
