"""Checkpoint readers: safetensors (bf16, shards) and torch .bin without torch, against torch's own writers.

The .bin reader's restricted unpickler is a security feature: files that would rebuild anything but tensors
are refused, before any of their code runs.
"""
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


def test_bf16_is_widened_to_float32_exactly(tmp_path):
    """Reference: a bf16 number is the top 16 bits of its float32 (the bits torch stores, shifted back)."""
    values = torch.tensor([0.0, -0.0, 1.0, -2.5, 3.140625, 1e-40, 3.0e38, float("inf"), float("-inf")])
    bf16 = torch.cat([values, torch.randn(64, generator=torch.Generator().manual_seed(1))]).to(torch.bfloat16)
    bits = bf16.view(torch.int16).numpy().astype(np.uint16).astype(np.uint32) << 16
    expected = bits.view(np.float32)
    save_file({"x": bf16}, str(tmp_path / "m.safetensors"))
    torch.save({"x": bf16}, tmp_path / "m.bin")
    for got in (read_safetensors(str(tmp_path / "m.safetensors"))["x"], read_torch_bin(str(tmp_path / "m.bin"))["x"]):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))  # bit for bit, signed zero too


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_sharded_directory(tmp_path, kind):
    tensors = _tensors()
    names = sorted(tensors)
    suffix = "safetensors" if kind == "safetensors" else "bin"
    prefix = "model" if kind == "safetensors" else "pytorch_model"
    shards = {f"{prefix}-00001-of-00002.{suffix}": names[:2], f"{prefix}-00002-of-00002.{suffix}": names[2:]}
    weight_map = {}
    for shard, keys in shards.items():
        part = {k: tensors[k] for k in keys}
        if kind == "safetensors":
            save_file(part, str(tmp_path / shard))
        else:
            torch.save(part, tmp_path / shard)
        weight_map.update({k: shard for k in keys})
    index = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    (tmp_path / index).write_text(json.dumps({"weight_map": weight_map}))
    got = load_state_dict(tmp_path)
    assert set(got) == set(tensors)
    for k, t in tensors.items():  # f32, f16, bf16 (widened), int64, a scalar
        np.testing.assert_array_equal(got[k], _expected(t))
        assert got[k].dtype == _expected(t).dtype


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


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def test_bin_that_would_run_code_is_refused_before_running_it(tmp_path):
    sentinel = tmp_path / "ran"
    torch.save({"w": torch.ones(2), "payload": _RunsCode(sentinel)}, tmp_path / "evil.bin")
    with pytest.raises(CheckpointError, match=r"refusing to unpickle (posix|os)\.system"):
        read_torch_bin(str(tmp_path / "evil.bin"))
    assert not sentinel.exists()


def test_bin_holding_a_whole_module_is_refused(tmp_path):
    torch.save(torch.nn.Linear(2, 3), tmp_path / "module.bin")
    with pytest.raises(CheckpointError, match="refusing to unpickle torch.nn"):
        read_torch_bin(str(tmp_path / "module.bin"))


def test_bin_with_parameters_loads_their_values(tmp_path):
    layer = torch.nn.Linear(2, 3)
    torch.save({"weight": layer.weight, "bias": layer.bias}, tmp_path / "params.bin")  # nn.Parameter objects
    got = read_torch_bin(str(tmp_path / "params.bin"))
    np.testing.assert_array_equal(got["weight"], layer.weight.detach().numpy())
    np.testing.assert_array_equal(got["bias"], layer.bias.detach().numpy())


def test_legacy_bin_format_is_a_clear_error(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="not a torch zip checkpoint"):
        read_torch_bin(str(tmp_path / "legacy.bin"))
