"""Checkpoint readers: safetensors (bf16, shards) and torch .bin without torch, against torch's own writers."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from eve_ms.convert.weights import CheckpointError, load_state_dict, read_safetensors, read_torch_bin  # noqa: E402


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(3, 4, generator=g),
        "b.bias": torch.randn(5, generator=g).to(torch.float16),
        "c.bf16": torch.randn(2, 3, generator=g).to(torch.bfloat16),
        "d.ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "e.scalar": torch.tensor(2.5),
    }


def _expected(t):
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def test_safetensors_all_dtypes(tmp_path):
    tensors = _tensors()
    save_file(tensors, str(tmp_path / "m.safetensors"))
    got = read_safetensors(str(tmp_path / "m.safetensors"))
    assert set(got) == set(tensors)
    for k, t in tensors.items():
        np.testing.assert_array_equal(got[k], _expected(t))
        assert got[k].shape == tuple(t.shape)


def test_torch_bin_including_views_and_noncontiguous(tmp_path):
    tensors = _tensors()
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors["view.t"] = base.t()  # non-contiguous: shares storage with an offset/stride
    tensors["view.row"] = base[1]
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    got = read_torch_bin(str(tmp_path / "pytorch_model.bin"))
    for k, t in tensors.items():
        np.testing.assert_array_equal(got[k], _expected(t.contiguous()))


def test_sharded_directory(tmp_path):
    tensors = _tensors()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / shard))
        weight_map.update({k: shard for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    got = load_state_dict(tmp_path)
    assert set(got) == set(tensors)


def test_truncated_and_missing_files_are_clear_errors(tmp_path):
    save_file(_tensors(), str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 10])
    with pytest.raises(CheckpointError, match="truncated"):
        read_safetensors(str(tmp_path / "cut.safetensors"))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        os.makedirs(tmp_path / "empty")
        load_state_dict(tmp_path / "empty")


def test_bin_with_arbitrary_objects_is_refused(tmp_path):
    torch.save({"w": torch.zeros(2), "fn": os.getcwd}, tmp_path / "evil.bin")
    with pytest.raises(CheckpointError, match="refusing"):
        read_torch_bin(str(tmp_path / "evil.bin"))
