"""Native token-allocation kernels and the choice between them and the composed ops.

`select_backend(kernel, device_target)` maps the config's `evf.kernel` (auto | composed |
custom) and the device to one of "composed", "cpu", "cuda", "ascend":

- `composed` always gives the MindSpore composed ops.
- `custom` gives the device's native kernel (CPU -> cpu, GPU -> cuda, Ascend -> ascend);
  a missing toolchain or operator package is then an error at build time whose message
  names the fallback (`evf.kernel: composed`): asked-for kernels never degrade silently.
- `auto` gives the native kernel when its toolchain (g++ / nvcc) or, on Ascend, the
  installed custom operator package is present, otherwise the composed ops with a logged
  warning: a default setting must not stop a run on a machine without a compiler.

`KernelAllocation` is the Cell the EVF layer calls for a native backend: same inputs and
outputs as the numpy reference (`eve_ms.ops.token_allocation.allocate_reference`), with
capacity, strategy, beta and W fixed at build time as operator attributes.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import mindspore as ms
from mindspore import nn, ops

from eve_ms.ops.kernels.build import FALLBACK_HINT, KERNELS, KernelBuildError, build_kernel, find_compiler, library_path
from eve_ms.ops.token_allocation import STRATEGY_CODES, check_allocation_args

logger = logging.getLogger(__name__)

KERNEL_CHOICES = ("auto", "composed", "custom")
BACKENDS = ("composed", "cpu", "cuda", "ascend")
NATIVE_BACKEND = {"CPU": "cpu", "GPU": "cuda", "Ascend": "ascend"}
NUM_COUNTS = 4  # kept0, kept1, dropped, redistributed

# The AscendC operator (ascend_kernels/img_gbpr): op type, and the vendor its package installs as.
ASCEND_OP_TYPE = "ImgGbprAllocation"
ASCEND_VENDOR = "eve_ms"
ASCEND_ACLNN_HEADER = "aclnn_img_gbpr_allocation.h"

INPUT_NAMES = ("probs", "is_image", "valid", "noise")
OUTPUT_NAMES = ("expert", "slot", "counts")

__all__ = [
    "BACKENDS", "KERNEL_CHOICES", "KernelAllocation", "KernelBuildError", "KernelOpSpec", "ascend_op_installed",
    "kernel_op_spec", "native_available", "select_backend",
]


def _canonical_target(device_target: str) -> str:
    canonical = {t.lower(): t for t in NATIVE_BACKEND}
    if not isinstance(device_target, str) or device_target.lower() not in canonical:
        raise ValueError(f"unknown device_target {device_target!r}; expected one of {tuple(NATIVE_BACKEND)}")
    return canonical[device_target.lower()]


def _ascend_vendor_dirs() -> list[Path]:
    """Directories where an installed custom operator package may live."""
    dirs = [Path(p) for p in os.environ.get("ASCEND_CUSTOM_OPP_PATH", "").split(":") if p]
    opp = os.environ.get("ASCEND_OPP_PATH")
    if opp and (Path(opp) / "vendors").is_dir():
        dirs += sorted(p for p in (Path(opp) / "vendors").iterdir() if p.is_dir())
    return dirs


def ascend_op_installed() -> bool:
    """Whether the ImgGbprAllocation custom op package is installed where CANN looks for it."""
    return any((d / "op_api" / "include" / ASCEND_ACLNN_HEADER).is_file() for d in _ascend_vendor_dirs())


def native_available(backend: str) -> bool:
    """Whether `backend`'s native kernel can be built/loaded here (compiler or op package present)."""
    if backend in KERNELS:
        return find_compiler(backend) is not None
    if backend == "ascend":
        return ascend_op_installed()
    raise ValueError(f"{backend!r} has no native kernel; expected one of {sorted([*KERNELS, 'ascend'])}")


def select_backend(kernel: str, device_target: str) -> str:
    """The allocation backend for config value `kernel` on `device_target` (see module doc)."""
    if kernel not in KERNEL_CHOICES:
        raise ValueError(f"evf.kernel must be one of {KERNEL_CHOICES}, got {kernel!r}")
    native = NATIVE_BACKEND[_canonical_target(device_target)]
    if kernel == "composed":
        return "composed"
    if kernel == "custom" or native_available(native):
        return native
    missing = {"cpu": f"C++ compiler {KERNELS['cpu'].default_compiler!r} (or $EVE_MS_CXX)",
               "cuda": f"CUDA compiler {KERNELS['cuda'].default_compiler!r} (or $EVE_MS_NVCC)",
               "ascend": f"installed custom op {ASCEND_OP_TYPE} (see ascend_kernels/README.md)"}[native]
    logger.warning("evf.kernel=auto on %s: %s not found, using the composed MindSpore ops", device_target, missing)
    return "composed"


@dataclasses.dataclass(frozen=True)
class KernelOpSpec:
    """Everything that defines the `ops.Custom` of a native backend, before it is built.

    `func` is what ops.Custom receives ("<library>:<entry>" for CPU/GPU, the op type for
    Ascend); `attrs` are the operator attributes; `attrs_as_inputs` says whether they are
    passed as trailing call arguments (AscendC/aclnn) instead of fixed in the reg info.
    """

    backend: str
    func: str
    target: str
    reg_op_name: str
    attrs: tuple  # ((name, value_type, value), ...)
    attrs_as_inputs: bool
    library: Path | None = None

    def attr_values(self) -> tuple:
        return tuple(value for _, _, value in self.attrs)

    def reg_info(self) -> dict:
        reg = ops.CustomRegOp(self.reg_op_name)
        for i, name in enumerate(INPUT_NAMES):
            reg = reg.input(i, name, "required")
        for i, name in enumerate(OUTPUT_NAMES):
            reg = reg.output(i, name, "required")
        dt = ops.DataType
        reg = reg.dtype_format(dt.F32_Default, dt.BOOL_Default, dt.BOOL_Default, dt.F32_Default,
                               dt.I32_Default, dt.I32_Default, dt.I32_Default)
        for name, value_type, value in self.attrs:
            if self.attrs_as_inputs:
                reg = reg.attr(name, "required", value_type)
            else:
                reg = reg.attr(name, "required", value_type, value=value)
        return reg.target(self.target).get_op_info()


def _check_params(num_tokens, strategy, capacity, beta, redistribute_ratio):
    if not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}")
    check_allocation_args(strategy, beta, redistribute_ratio)
    if not isinstance(capacity, int) or not 0 <= capacity <= num_tokens:
        raise ValueError(f"capacity must be an int in [0, num_tokens={num_tokens}], got {capacity!r} "
                         "(compute it with eve_ms.ops.token_allocation.compute_capacity)")


def kernel_op_spec(backend: str, num_tokens: int, strategy: str, capacity: int, beta: float = 1.0,
                   redistribute_ratio: float = 0.5, build: bool = True) -> KernelOpSpec:
    """The ops.Custom definition for a native backend; with build=False nothing is compiled
    (the library path is where the build would put it)."""
    _check_params(num_tokens, strategy, capacity, beta, redistribute_ratio)
    # aclnn passes Float attributes as double (CANN rounds them to the op's float32); the AOT
    # kernels read them with GetAttrFloat. Either way the kernel sees float32(beta), as numpy does.
    real = "double" if backend == "ascend" else "float"
    attrs = (("capacity", "int", int(capacity)), ("strategy", "int", STRATEGY_CODES[strategy]),
             ("beta", real, float(beta)), ("redistribute_ratio", real, float(redistribute_ratio)))
    if backend in KERNELS:
        library = build_kernel(backend) if build else library_path(backend)
        _check_aot_white_list(library)
        entry = KERNELS[backend].entry
        target = "CPU" if backend == "cpu" else "GPU"
        return KernelOpSpec(backend, f"{library}:{entry}", target, entry, attrs, False, library)
    if backend == "ascend":
        return KernelOpSpec(backend, ASCEND_OP_TYPE, "Ascend", ASCEND_OP_TYPE, attrs, True, None)
    raise ValueError(f"no native kernel for backend {backend!r}; expected one of cpu, cuda, ascend "
                     "(the composed ops live in eve_ms.ops.allocator)")


def _check_aot_white_list(library: Path) -> None:
    """MindSpore refuses AOT libraries outside $MS_CUSTOM_AOT_WHITE_LIST when it is set: say so early."""
    allowed = os.environ.get("MS_CUSTOM_AOT_WHITE_LIST")
    if allowed and os.path.realpath(allowed) not in os.path.realpath(library):
        raise KernelBuildError(
            f"MS_CUSTOM_AOT_WHITE_LIST={allowed} does not contain the kernel cache {library.parent}; point "
            f"EVE_MS_KERNEL_CACHE to a directory inside it, or {FALLBACK_HINT}")


def _allocation_out_shape(num_tokens):
    def out_shape(probs, is_image, valid, noise, *attrs):
        shapes = {"probs": probs, "is_image": is_image, "valid": valid, "noise": noise}
        expected = {"probs": [num_tokens, 2], "is_image": [num_tokens], "valid": [num_tokens],
                    "noise": [num_tokens]}
        for name, shape in shapes.items():
            if list(shape) != expected[name]:
                raise ValueError(f"token allocation kernel: {name} has shape {list(shape)}, "
                                 f"expected {expected[name]} (num_tokens={num_tokens})")
        return (num_tokens,), (num_tokens,), (NUM_COUNTS,)

    return out_shape


def _allocation_out_dtype(probs, is_image, valid, noise, *attrs):
    return ms.int32, ms.int32, ms.int32


def _require_device(backend: str):
    needed = {"cuda": "GPU", "ascend": "Ascend"}.get(backend)
    current = ms.get_context("device_target")
    if needed and current != needed:
        native = NATIVE_BACKEND.get(current, "composed")
        raise RuntimeError(f"the {backend} allocation kernel runs on device_target {needed}, but MindSpore is set "
                           f"to {current}; use the {native} backend or {FALLBACK_HINT}")
    if backend == "ascend" and not ascend_op_installed():
        raise KernelBuildError(
            f"the AscendC operator {ASCEND_OP_TYPE} (vendor {ASCEND_VENDOR}) is not installed: no "
            f"{ASCEND_ACLNN_HEADER} under $ASCEND_CUSTOM_OPP_PATH or $ASCEND_OPP_PATH/vendors; build and install it "
            f"with ascend_kernels/img_gbpr/build.sh, or {FALLBACK_HINT}")


class KernelAllocation(nn.Cell):
    """Token allocation by a native kernel: (probs, is_image, valid, noise) -> (expert, slot, counts).

    probs [T, 2] float32, is_image/valid [T] bool, noise [T] float32 in [0, 1);
    expert [T] int32 in {-1, 0, 1}, slot [T] int32, counts [4] int32 = (kept0, kept1,
    dropped, redistributed). Not differentiable: inputs pass through stop_gradient.
    """

    def __init__(self, backend, num_tokens, strategy, capacity, beta=1.0, redistribute_ratio=0.5):
        super().__init__()
        _require_device(backend)
        self.spec = kernel_op_spec(backend, num_tokens, strategy, capacity, beta, redistribute_ratio)
        self.backend = backend
        self.num_tokens = num_tokens
        self.attrs_as_inputs = self.spec.attrs_as_inputs
        self.capacity, self.strategy_code, self.beta, self.redistribute_ratio = self.spec.attr_values()
        self.allocate = ops.Custom(self.spec.func, out_shape=_allocation_out_shape(num_tokens),
                                   out_dtype=_allocation_out_dtype, func_type="aot", reg_info=self.spec.reg_info())
        self.cast = ops.Cast()

    def construct(self, probs, is_image, valid, noise):
        # dtype checks are resolved at compile time in graph mode: no cast op when none is needed
        if probs.dtype != ms.float32:
            probs = self.cast(probs, ms.float32)
        if noise.dtype != ms.float32:
            noise = self.cast(noise, ms.float32)
        if is_image.dtype != ms.bool_:
            is_image = self.cast(is_image, ms.bool_)
        if valid.dtype != ms.bool_:
            valid = self.cast(valid, ms.bool_)
        probs = ops.stop_gradient(probs)
        noise = ops.stop_gradient(noise)
        if self.attrs_as_inputs:
            # AscendC (aclnn) operators take their attributes as trailing call arguments.
            return self.allocate(probs, is_image, valid, noise, self.capacity, self.strategy_code, self.beta,
                                 self.redistribute_ratio)
        return self.allocate(probs, is_image, valid, noise)
