"""Read checkpoint tensors into numpy without torch: safetensors (sharded too) and pytorch_model.bin.

Hugging Face directories hold `model.safetensors`, `model.safetensors.index.json` with shards,
`pytorch_model.bin` or `pytorch_model.bin.index.json`. safetensors files are read by the
`safetensors` library's numpy API; numpy's bfloat16 comes from `ml_dtypes`. The package never
imports torch, so `.bin` files (torch's zip format) are read with a restricted unpickler that only
rebuilds tensors: unpickling anything else would run code the file names. bf16 is widened to
float32 (exactly) because the converters compute in float32.
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections import OrderedDict

import ml_dtypes  # registers numpy's "bfloat16", the dtype safetensors' numpy API returns BF16 tensors in
import numpy as np
from eve_ms.errors import EveError

_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class CheckpointError(EveError, ValueError):
    """A checkpoint that cannot be read or does not match what is expected."""


def _widen(array: np.ndarray, path: str, name: str) -> np.ndarray:
    """bf16 as float32; other numpy-native dtypes as they are; anything else (float8 ...) an error."""
    if array.dtype == ml_dtypes.bfloat16:
        return array.astype(np.float32)
    if array.dtype.kind not in "biufc":
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {array.dtype}")
    return array


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as fh:
            return {name: _widen(fh.get_tensor(name), path, name) for name in fh.keys()}
    except SafetensorError as err:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file: {err}") from err


class _StorageRef:
    def __init__(self, key: str, dtype):
        self.key, self.dtype = key, dtype


class _TensorUnpickler(pickle.Unpickler):
    """Unpickles torch's data.pkl, rebuilding tensors as numpy arrays and refusing anything else."""

    def __init__(self, fh, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(fh)
        self.archive, self.prefix, self.path = archive, prefix, path

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda tensor, requires_grad, hooks: tensor
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return name
        raise CheckpointError(f"{self.path}: refusing to unpickle {module}.{name} (not a plain tensor state dict)")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage":
            raise CheckpointError(f"{self.path}: unexpected persistent id {kind!r}")
        return _StorageRef(key, _TORCH_STORAGE_DTYPES[storage_type])

    def _rebuild_tensor(self, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
        raw = self.archive.read(f"{self.prefix}/data/{storage.key}")
        flat = np.frombuffer(raw, dtype=np.dtype(storage.dtype).newbyteorder("<"))
        itemsize = flat.itemsize
        if not size:
            tensor = flat[offset:offset + 1].reshape(())
        else:
            tensor = np.lib.stride_tricks.as_strided(
                flat[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
            )
        return np.array(_widen(tensor, self.path, storage.key))  # a copy: the archive's buffer is not kept


def read_torch_bin(path: str) -> dict[str, np.ndarray]:
    """Tensors of a torch zip-format checkpoint (torch.save since 1.6), without importing torch."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise CheckpointError(f"{path}: not a torch zip checkpoint (legacy or corrupt): {err}") from err
    with archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if not pkl:
            raise CheckpointError(f"{path}: no data.pkl inside")
        prefix = pkl[0][: -len("/data.pkl")]
        with archive.open(pkl[0]) as fh:
            state = _TensorUnpickler(fh, archive, prefix, path).load()
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return dict(state)


def _read_file(path: str) -> dict[str, np.ndarray]:
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    if path.endswith((".bin", ".pt", ".pth")):
        return read_torch_bin(path)
    raise CheckpointError(f"{path}: unknown checkpoint file type")


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint file or Hugging Face model directory, as numpy arrays."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return _read_file(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = os.path.join(path, index_name)
        if os.path.exists(index_path):
            with open(index_path, encoding="utf-8") as fh:
                weight_map = json.load(fh)["weight_map"]
            state = {}
            for shard in sorted(set(weight_map.values())):
                shard_path = os.path.join(path, shard)
                if not os.path.exists(shard_path):
                    raise CheckpointError(f"{index_path}: shard {shard} is missing")
                state.update(_read_file(shard_path))
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.exists(os.path.join(path, name)):
            return _read_file(os.path.join(path, name))
    raise CheckpointError(f"{path}: no model.safetensors, pytorch_model.bin or shard index found")


def save_safetensors(tensors: dict[str, np.ndarray], path: str, metadata: dict[str, str] | None = None) -> None:
    """Write tensors atomically: a temporary file, fsync, then rename over the target."""
    from safetensors.numpy import save_file

    tmp = f"{path}.tmp{os.getpid()}"
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata=metadata)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates 0600 files; a model folder is for others to read
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
