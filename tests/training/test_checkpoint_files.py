"""safetensors checkpoints: standard format, atomic replacement, corruption and truncation detection, strict loading."""
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn
from safetensors import safe_open

from eve_ms.training.checkpoint import (
    BF16,
    CheckpointError,
    CheckpointManager,
    load_weights,
    read_safetensors,
    save_weights,
    write_safetensors,
)


def _tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "model/a.weight": rng.normal(size=(4, 3)).astype(np.float32),
        "model/b.bias": rng.normal(size=(5,)).astype(np.float32),
        "optimizer/global_step": np.array([7], np.int32),
    }


def test_files_are_standard_safetensors(tmp_path):
    path = str(tmp_path / "x.safetensors")
    tensors = _tensors()
    write_safetensors(path, tensors, {"step": "3"})
    with safe_open(path, framework="numpy") as fh:  # the reference reader
        assert sorted(fh.keys()) == sorted(tensors)
        for name, value in tensors.items():
            np.testing.assert_array_equal(fh.get_tensor(name), value)
        assert fh.metadata()["step"] == "3"


def test_bfloat16_round_trips_bit_exactly(tmp_path):
    param = ms.Tensor(np.array([1.5, -3.25, 1e-3, 65504.0], np.float32)).astype(ms.bfloat16)
    values = param.astype(ms.float32).asnumpy()
    path = str(tmp_path / "bf16.safetensors")
    write_safetensors(path, {"w": BF16.from_float32(values)})
    tensors, _ = read_safetensors(path)
    assert isinstance(tensors["w"], BF16)
    np.testing.assert_array_equal(tensors["w"].to_float32(), values)


def test_truncated_file_is_detected(tmp_path):
    path = str(tmp_path / "t.safetensors")
    write_safetensors(path, _tensors())
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size - 10)
    with pytest.raises(CheckpointError, match="truncated"):
        read_safetensors(path)


def test_corrupt_tensor_is_detected_and_named(tmp_path):
    path = str(tmp_path / "c.safetensors")
    write_safetensors(path, _tensors())
    with open(path, "r+b") as fh:  # flip one byte in the last tensor's data
        fh.seek(-3, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-3, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match="corrupt"):
        read_safetensors(path)


@pytest.mark.parametrize("edit", [(b'"step":"3"', b'"step":"5"'), (b'samples_seen\\": 12', b'samples_seen\\": 18'),
                                  (b'"shape":[4,3]', b'"shape":[3,4]')], ids=["step", "data position", "shape"])
def test_an_edited_header_is_detected(tmp_path, edit):
    """The header (step, data position, config, tensor entries) is covered by its own checksum."""
    path = tmp_path / "h.safetensors"
    write_safetensors(str(path), _tensors(), {"step": "3", "data_state": '{"epoch": 0, "samples_seen": 12}'})
    raw = path.read_bytes()
    assert raw.count(edit[0]) == 1 and len(edit[0]) == len(edit[1])
    path.write_bytes(raw.replace(*edit))
    with pytest.raises(CheckpointError, match="corrupt header"):
        read_safetensors(str(path))


def test_a_killed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = str(tmp_path / "w.safetensors")
    write_safetensors(path, _tensors(0))

    def crash(*args):
        raise KeyboardInterrupt("killed while renaming")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_safetensors(path, _tensors(1))
    monkeypatch.undo()
    tensors, _ = read_safetensors(path)
    np.testing.assert_array_equal(tensors["model/a.weight"], _tensors(0)["model/a.weight"])
    assert os.listdir(tmp_path) == ["w.safetensors"]


def test_manager_keeps_the_last_k_and_falls_back_past_a_broken_newest(tmp_path):
    messages = []
    manager = CheckpointManager(str(tmp_path), keep_last=2, log=messages.append)
    for step in (2, 4, 6):
        manager.save(step, _tensors(step), {"data_state": "{}"})
    assert [s for s, _ in manager.checkpoints()] == [4, 6]
    with open(manager.path_for(6), "r+b") as fh:
        fh.truncate(100)
    (tmp_path / ".step_00000008.safetensors.tmp123").write_bytes(b"partial")  # a write that was killed
    state = manager.newest_valid()
    assert state.step == 4
    np.testing.assert_array_equal(state.tensors["model/a.weight"], _tensors(4)["model/a.weight"])
    assert len(messages) == 1 and "step 6" in messages[0] and "truncated" in messages[0]


def _net():
    return nn.SequentialCell([nn.Dense(3, 4), nn.Dense(4, 2)])


def test_load_weights_round_trip(tmp_path):
    ms.set_seed(0)
    source, target = _net(), _net()
    path = str(tmp_path / "model.safetensors")
    save_weights(source, path)
    report = load_weights(target, path)
    assert sorted(report.loaded) == sorted(p.name for p in target.get_parameters())
    for a, b in zip(source.get_parameters(), target.get_parameters()):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def test_load_weights_errors_name_the_tensor(tmp_path):
    path = str(tmp_path / "model.safetensors")
    weights = {p.name: p.asnumpy() for p in _net().get_parameters()}
    missing = dict(weights)
    del missing["1.bias"]
    write_safetensors(path, missing)
    with pytest.raises(CheckpointError, match=r"lacks 1 tensor.*'1\.bias'"):
        load_weights(_net(), path)
    report = load_weights(_net(), path, allow_missing=["*.bias"])
    assert report.missing == ["1.bias"]

    wrong = dict(weights, **{"0.weight": np.zeros((4, 5), np.float32)})
    write_safetensors(path, wrong)
    with pytest.raises(CheckpointError, match=r"'0\.weight' has shape \[4, 5\]"):
        load_weights(_net(), path)

    extra = dict(weights, **{"2.weight": np.zeros((1,), np.float32)})
    write_safetensors(path, extra)
    with pytest.raises(CheckpointError, match=r"'2\.weight'"):
        load_weights(_net(), path)
    assert load_weights(_net(), path, strict=False).unexpected == ["2.weight"]

    with pytest.raises(CheckpointError, match="not found"):
        load_weights(_net(), str(tmp_path / "absent.safetensors"))
