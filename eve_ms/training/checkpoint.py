"""safetensors checkpoints: atomic writes, checksums, keep-last-K, and strict loading by name.

Files are standard safetensors (8-byte header length, JSON header, raw little-endian data),
readable by the `safetensors` library; bfloat16 is stored as BF16. The header's
`__metadata__` holds the CRC-32 of every tensor (`eve_ms.crc32`) and of the header itself
(`eve_ms.header_crc32`: tensor entries and metadata, so the stored step, data position and
config are covered too), so a truncated file (its header promises more bytes than there are)
and a corrupted one (a checksum differs) are both detected and named. A file is written to a temporary name in the same folder,
fsynced and renamed, so a crash leaves either the previous state or the new complete file.

Two kinds of file:
- a training state (`step_00000100.safetensors` under `<output_dir>/checkpoints/`):
  `model/<name>` for the trainable parameters, `optimizer/<name>` for the optimizer's
  moments and step counter, and in the metadata the step, the data loader's position, the
  config text, RNG states and the loss scaler. Frozen parameters are not stored: the task
  rebuilds them from the config (the previous stage's weights) when a run resumes.
- a weights file (`<output_dir>/model.safetensors`, the next stage's `load_checkpoint`):
  every parameter under its own name.
`load_weights` reads either kind into a network.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from eve_ms.errors import EveError

FORMAT = "eve-ms"
KIND_TRAIN_STATE = "train_state"
KIND_WEIGHTS = "weights"
MODEL_PREFIX = "model/"
OPTIMIZER_PREFIX = "optimizer/"
_CKPT_RE = re.compile(r"^step_(\d{8})\.safetensors$")

# safetensors dtype names <-> numpy; BF16 is handled through uint16 bit patterns.
_NP_TO_ST = {
    np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16", np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8", np.dtype(np.uint16): "U16", np.dtype(np.uint32): "U32", np.dtype(np.uint64): "U64",
    np.dtype(np.bool_): "BOOL",
}
_ST_TO_NP = {v: k for k, v in _NP_TO_ST.items()}
_ST_TO_NP["BF16"] = np.dtype(np.uint16)


class CheckpointError(EveError, ValueError):
    """A checkpoint that cannot be used: unreadable, truncated, corrupt or not matching the network."""


@dataclass
class BF16:
    """A bfloat16 tensor as its uint16 bit patterns (numpy has no bfloat16)."""

    bits: np.ndarray

    def to_float32(self) -> np.ndarray:
        return (self.bits.astype(np.uint32) << 16).view(np.float32)

    @staticmethod
    def from_float32(values: np.ndarray) -> "BF16":
        # exact for values that are already bfloat16 numbers, which is all this is used for
        return BF16((np.ascontiguousarray(values, np.float32).view(np.uint32) >> 16).astype(np.uint16))


# --------------------------------------------------------------------------- file format


def _as_array(value) -> tuple[np.ndarray, str]:
    if isinstance(value, BF16):
        return np.ascontiguousarray(value.bits), "BF16"
    array = np.ascontiguousarray(value)
    if array.dtype not in _NP_TO_ST:
        raise CheckpointError(f"cannot store dtype {array.dtype} in safetensors")
    return array, _NP_TO_ST[array.dtype]


def write_safetensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """Write `tensors` (name -> numpy array or BF16) atomically, with per-tensor CRC-32 in the metadata."""
    arrays, header, crcs, offset = [], {}, {}, 0
    for name in sorted(tensors):
        array, dtype = _as_array(tensors[name])
        raw = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        crcs[name] = zlib.crc32(raw)
        arrays.append(raw)
        offset += len(raw)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta["format"] = FORMAT
    meta["eve_ms.crc32"] = json.dumps(crcs, separators=(",", ":"))
    header["__metadata__"] = meta
    meta[HEADER_CRC_KEY] = str(_header_crc(header))
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(header_bytes)))
            fh.write(header_bytes)
            for raw in arrays:
                fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(directory)


HEADER_CRC_KEY = "eve_ms.header_crc32"


def _header_crc(header: dict) -> int:
    """CRC-32 of the header (tensor entries and metadata: step, data position, config...) without its own entry."""
    meta = {k: v for k, v in header.get("__metadata__", {}).items() if k != HEADER_CRC_KEY}
    canonical = {**{k: v for k, v in header.items() if k != "__metadata__"}, "__metadata__": meta}
    return zlib.crc32(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_header(path: str) -> tuple[dict, dict, int]:
    """(tensor entries, metadata, data start) of a safetensors file; raises CheckpointError if malformed/truncated."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated (file of {size} bytes has no header)")
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                raise CheckpointError(f"{path}: truncated (header of {length} bytes, file of {size} bytes)")
            header = json.loads(fh.read(length).decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt header ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt header (not a JSON object)")
    saved_crc = (header.get("__metadata__") or {}).get(HEADER_CRC_KEY)
    if saved_crc is not None and str(_header_crc(header)) != saved_crc:  # files of older versions have none
        raise CheckpointError(f"{path}: corrupt header (its checksum does not match: the step, data position or "
                              "config stored in it were changed)")
    metadata = header.pop("__metadata__", {}) or {}
    start = 8 + length
    data_size = size - start
    end = 0
    for name, entry in header.items():
        try:
            begin, stop = entry["data_offsets"]
            dtype = _ST_TO_NP[entry["dtype"]]
            count = int(np.prod(entry["shape"], dtype=np.int64))
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}") from None
        if stop - begin != count * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} has {stop - begin} bytes for shape {entry['shape']}")
        end = max(end, stop)
    if end > data_size:
        raise CheckpointError(f"{path}: truncated (data of {data_size} bytes, header needs {end})")
    return header, metadata, start


def read_safetensors(path: str, verify: bool = True, names=None) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file; BF16 tensors come back as `BF16`.

    With `verify`, every tensor's CRC-32 (when the file has them) is checked; a mismatch is
    a CheckpointError naming the tensor.
    """
    header, metadata, start = read_header(path)
    crcs = json.loads(metadata.get("eve_ms.crc32", "{}")) if verify else {}
    wanted = header.keys() if names is None else [n for n in header if n in set(names)]
    tensors = {}
    with open(path, "rb") as fh:
        for name in wanted:
            entry = header[name]
            begin, stop = entry["data_offsets"]
            fh.seek(start + begin)
            raw = fh.read(stop - begin)
            if len(raw) != stop - begin:
                raise CheckpointError(f"{path}: truncated inside tensor {name!r}")
            if name in crcs and zlib.crc32(raw) != crcs[name]:
                raise CheckpointError(f"{path}: tensor {name!r} is corrupt (checksum mismatch)")
            array = np.frombuffer(raw, dtype=_ST_TO_NP[entry["dtype"]]).reshape(entry["shape"]).copy()
            tensors[name] = BF16(array) if entry["dtype"] == "BF16" else array
    return tensors, metadata


# --------------------------------------------------------------------------- MindSpore <-> numpy


def param_to_numpy(param):
    import mindspore as ms

    if param.dtype == ms.bfloat16:
        return BF16.from_float32(param.astype(ms.float32).asnumpy())
    return param.asnumpy()


def numpy_to_tensor(value, dtype):
    import mindspore as ms

    if isinstance(value, BF16):
        return ms.Tensor(value.to_float32()).astype(dtype)
    tensor = ms.Tensor(value)
    return tensor if tensor.dtype == dtype else tensor.astype(dtype)


def _value_dtype_name(value) -> str:
    return "bfloat16" if isinstance(value, BF16) else str(value.dtype)


def _value_shape(value) -> tuple:
    return tuple((value.bits if isinstance(value, BF16) else value).shape)


# --------------------------------------------------------------------------- weights


@dataclass
class LoadReport:
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)  # network parameters left as they were (allowed)
    unexpected: list = field(default_factory=list)  # file tensors the network does not have


def save_weights(network, path: str, metadata: dict | None = None) -> None:
    """Every parameter of `network` under its own name (the file a next stage loads)."""
    tensors = {p.name: param_to_numpy(p) for p in network.get_parameters()}
    meta = dict(metadata or {})
    meta["kind"] = KIND_WEIGHTS
    write_safetensors(path, tensors, meta)


def _short(names, limit=8) -> str:
    names = list(names)
    text = ", ".join(repr(n) for n in names[:limit])
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")


def assign_tensors(params: dict, tensors: dict, source: str, strict: bool = True, allow_missing=()) -> LoadReport:
    """Set each parameter in `params` (name -> Parameter) from `tensors` (name -> array).

    A parameter missing from `tensors` is an error unless it matches a glob in `allow_missing`;
    a shape mismatch is always an error; with `strict`, so is a tensor no parameter takes.
    Nothing is assigned unless everything checks out.
    """
    report = LoadReport()
    problems = []
    for name, param in params.items():
        if name not in tensors:
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in allow_missing):
                report.missing.append(name)
            else:
                problems.append(("missing", name))
            continue
        shape = _value_shape(tensors[name])
        if shape != tuple(param.shape):
            problems.append(("shape", f"tensor {name!r} has shape {list(shape)} in {source}, "
                                      f"the network's parameter has {list(param.shape)}"))
    report.unexpected = sorted(n for n in tensors if n not in params)
    missing = [n for kind, n in problems if kind == "missing"]
    if missing:
        raise CheckpointError(f"{source} lacks {len(missing)} tensor(s) the network needs: {_short(missing)}")
    shapes = [msg for kind, msg in problems if kind == "shape"]
    if shapes:
        raise CheckpointError(shapes[0] + (f" (and {len(shapes) - 1} more mismatches)" if len(shapes) > 1 else ""))
    if strict and report.unexpected:
        raise CheckpointError(
            f"{source} has {len(report.unexpected)} tensor(s) the network does not: {_short(report.unexpected)}"
        )
    for name, param in params.items():
        if name in tensors:
            param.set_data(numpy_to_tensor(tensors[name], param.dtype))
            report.loaded.append(name)
    return report


def load_weights(network, path: str, strict: bool = True, allow_missing=()) -> LoadReport:
    """Load a weights file or a training state's `model/` tensors into `network` by parameter name.

    Errors (CheckpointError) name the file and the tensor: a missing file, a truncated or
    corrupt one, a network parameter the file lacks (unless it matches a glob in
    `allow_missing`, e.g. "*.mindpet_delta_lora_*"), a shape mismatch, and with `strict`
    a file tensor the network has no parameter for.
    """
    tensors, metadata = read_safetensors(path)
    if metadata.get("kind") == KIND_TRAIN_STATE:
        tensors = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    params = {p.name: p for p in network.get_parameters()}
    return assign_tensors(params, tensors, path, strict=strict, allow_missing=allow_missing)


# --------------------------------------------------------------------------- training states


@dataclass
class TrainState:
    path: str
    step: int
    tensors: dict  # name -> array, with model/ and optimizer/ prefixes
    metadata: dict

    def json(self, key: str, default=None):
        return json.loads(self.metadata[key]) if key in self.metadata else default

    def section(self, prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}


class CheckpointManager:
    """Training states `step_NNNNNNNN.safetensors` in one folder: save, keep the last K, find the newest good one."""

    def __init__(self, directory: str, keep_last: int = 3, log=print):
        self.directory = directory
        self.keep_last = keep_last
        self.log = log
        self.rejected: list = []  # (path, reason) of the checkpoints the last `newest_valid` skipped

    def path_for(self, step: int) -> str:
        return os.path.join(self.directory, f"step_{step:08d}.safetensors")

    def checkpoints(self) -> list[tuple[int, str]]:
        """(step, path) of every checkpoint file, oldest first (not verified)."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            match = _CKPT_RE.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(self.directory, name)))
        return sorted(found)

    def save(self, step: int, tensors: dict, metadata: dict) -> str:
        meta = dict(metadata)
        meta["kind"] = KIND_TRAIN_STATE
        meta["step"] = str(step)
        path = self.path_for(step)
        write_safetensors(path, tensors, meta)
        self._prune()
        return path

    def _prune(self) -> None:
        for _, path in self.checkpoints()[: -self.keep_last]:
            os.remove(path)
        for name in os.listdir(self.directory):  # temporary files of writes that were killed
            if name.startswith(".step_") and ".tmp" in name:
                try:
                    os.remove(os.path.join(self.directory, name))
                except OSError:
                    pass

    def load(self, path: str) -> TrainState:
        tensors, metadata = read_safetensors(path)
        if metadata.get("kind") != KIND_TRAIN_STATE or "step" not in metadata:
            raise CheckpointError(f"{path}: not an eve-ms training state")
        return TrainState(path, int(metadata["step"]), tensors, metadata)

    def newest_valid(self) -> TrainState | None:
        """The newest checkpoint that reads back intact; broken newer ones are reported, skipped and
        listed in `self.rejected` as (path, reason)."""
        candidates = self.checkpoints()
        self.rejected = []
        for step, path in reversed(candidates):
            try:
                return self.load(path)
            except CheckpointError as err:
                self.rejected.append((path, str(err)))
                self.log(f"skipping checkpoint of step {step}: {err}; falling back to the previous one")
        return None

    def no_usable_checkpoint(self) -> CheckpointError:
        """The error of a resume that found nothing to resume from (after `newest_valid`): what was found, why not."""
        rejected = self.rejected
        if not rejected:
            return CheckpointError(
                f"--resume: no checkpoint in {self.directory} to resume from; run without --resume to start at step "
                "0, or use --resume-or-start"
            )
        why = "; ".join(f"{os.path.basename(path)}: {reason.replace(path + ': ', '')}" for path, reason in rejected)
        return CheckpointError(
            f"--resume: none of the {len(rejected)} checkpoint(s) in {self.directory} is usable ({why}); remove them "
            "and run without --resume to start again at step 0, or use --resume-or-start"
        )
