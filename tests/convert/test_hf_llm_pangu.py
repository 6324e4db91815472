"""The Eve release's LLM (InternLM-format PanGu-pi Pro) -> eve-ms and back: logits, layout, round trip, errors.

The source is `pangu_reference`, a PyTorch model written from the release's facts at a tiny size
with 12 layers (split 8) and q/k/v biases, saved as `InternLMForCausalLM.save_pretrained` would.
"""
import json

import numpy as np
import pytest
import torch
from mindspore import Tensor
from safetensors.numpy import load_file, save_file

from eve_ms.cli import main
from eve_ms.config import ConfigError, LLMConfig
from eve_ms.convert import load_hf_llm
from eve_ms.convert.eve_to_hf import export_hf_llm
from eve_ms.convert.weights import CheckpointError
from eve_ms.models.llm import LLM
from pangu_reference import build, logits, save_released_layout, tiny_config

ATOL = 1e-4


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("pangu")
    model = build(tiny_config(), seed=21)
    save_released_layout(model, root / "safetensors")
    save_released_layout(model, root / "bin", weights="bin")
    return dict(root=root, model=model, state={k: v.numpy() for k, v in model.state_dict().items()})


def test_release_folder_builds_the_release_layer_layout(release):
    llm = load_hf_llm(release["root"] / "safetensors")
    config = llm.config
    assert (config.split_index, config.ffn_below_split, config.ffn_from_split) == (8, "series", "swiglu")
    assert (config.attn_shortcut_width, config.attn_shortcut_act, config.attention_bias) == (128, "fast_gelu", True)
    assert [layer.mlp.kind for layer in llm.model.layers] == ["series"] * 8 + ["swiglu"] * 4
    assert [layer.has_attn_shortcut for layer in llm.model.layers] == [False] * 8 + [True] * 4
    assert any(name.endswith("rotary_emb.inv_freq") for name in release["state"])  # present, and ignored


def test_logits_equal_the_pytorch_reference(release, any_mode):
    llm = load_hf_llm(release["root"] / "safetensors")
    ids = np.random.default_rng(0).integers(3, 96, (2, 9)).astype(np.int32)
    np.testing.assert_allclose(llm(Tensor(ids)).asnumpy(), logits(release["model"], ids), atol=ATOL, rtol=0)


def test_left_padded_batch_and_bin_weights_give_the_same_logits(release):
    llm = load_hf_llm(release["root"] / "bin")
    ids = np.random.default_rng(1).integers(3, 96, (2, 7)).astype(np.int32)
    mask = np.ones((2, 7), np.int32)
    mask[1, :3] = 0
    out = llm(Tensor(ids), Tensor(mask)).asnumpy()
    expected = logits(release["model"], ids, mask)
    np.testing.assert_allclose(out[0], expected[0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(out[1, 3:], expected[1, 3:], atol=ATOL, rtol=0)  # padding rows mean nothing


def test_convert_and_export_again_gives_identical_tensors_in_the_release_layout(release, tmp_path):
    component, exported = tmp_path / "llm", tmp_path / "hf"
    assert main(["convert", "hf-llm", "--src", str(release["root"] / "bin"), "--out", str(component)]) == 0
    assert main(["convert", "to-hf-llm", "--src", str(component), "--out", str(exported)]) == 0
    tensors = load_file(exported / "model.safetensors")
    original = release["state"]
    assert set(tensors) == set(original)
    for name, value in original.items():
        assert tensors[name].dtype == value.dtype and tensors[name].shape == value.shape, name
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)
    config = json.loads((exported / "config.json").read_text())
    assert {key: config[key] for key in tiny_config()} == tiny_config() | {"architectures": ["InternLMForCausalLM"]}
    reloaded = build(tiny_config(), seed=99)
    reloaded.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
    ids = np.random.default_rng(2).integers(3, 96, (1, 6))
    np.testing.assert_array_equal(logits(reloaded, ids), logits(release["model"], ids))


def _with_tensors(release, tmp_path, change):
    folder = tmp_path / "changed"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text((release["root"] / "safetensors" / "config.json").read_text())
    state = dict(release["state"])
    change(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_unknown_and_missing_tensors_are_named(release, tmp_path):
    def add(state):
        state["model.layers.3.mlp.gate_proj3.weight"] = np.zeros((48, 32), np.float32)

    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.3\.mlp\.gate_proj3\.weight'"):
        load_hf_llm(_with_tensors(release, tmp_path / "a", add))

    def drop(state):
        del state["model.layers.9.attn_linear.2.weight"]

    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.9\.attn_linear\.2\.weight'"):
        load_hf_llm(_with_tensors(release, tmp_path / "b", drop))


def test_a_layout_the_release_cannot_hold_is_not_exported(tmp_path):
    config = LLMConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=3, num_heads=2,
                       ffn_below_split="series", attn_shortcut_width=128, layer_split=1)
    with pytest.raises(ConfigError, match=r"layer_split=1 \(the release has None\)"):
        export_hf_llm(LLM(config), str(tmp_path / "out"))
