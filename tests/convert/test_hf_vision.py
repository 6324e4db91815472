"""Hugging Face vision checkpoints -> eve_ms encoders: parity with transformers on tiny random models, errors."""
import json
import os

import mindspore as ms
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    ResNetConfig,
    ResNetForImageClassification,
    ResNetModel,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from eve_ms.convert.hf_vision import load_encoder_weights, load_hf_vision, vision_config_from_hf
from parity_cases import randomise_batchnorm  # tools/parity_cases.py
from eve_ms.convert.weights import CheckpointError
from eve_ms.models.vision import build_vision_encoder

VIT = dict(
    hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8
)
TEXT = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
RESNET = dict(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 2])
ATOL = 1e-4


def save(model, path):
    torch.manual_seed(0)
    model.eval().save_pretrained(path)  # safetensors
    return str(path)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Tiny random checkpoints of every supported layout, saved once for the module."""
    root = tmp_path_factory.mktemp("hf_vision")
    torch.manual_seed(0)
    models = {
        "siglip_vision": SiglipVisionModel(SiglipVisionConfig(**VIT)),
        "clip_vision": CLIPVisionModel(CLIPVisionConfig(**VIT)),
        "siglip_full": SiglipModel(SiglipConfig(vision_config=dict(VIT), text_config=dict(TEXT))),
        "clip_full": CLIPModel(CLIPConfig(vision_config=dict(VIT), text_config=dict(TEXT), projection_dim=8)),
        "resnet": randomise_batchnorm(ResNetModel(ResNetConfig(**RESNET)), seed=1),
        "resnet_classifier": randomise_batchnorm(ResNetForImageClassification(ResNetConfig(
            **RESNET, num_labels=3, layer_type="basic", downsample_in_first_stage=True,
        )), seed=1),
        "resnet_bottleneck_stride": randomise_batchnorm(
            ResNetModel(ResNetConfig(**RESNET, downsample_in_bottleneck=True)), seed=1
        ),
    }
    return {name: (save(model, root / name), model) for name, model in models.items()}


def hf_hidden_state(model, x, select_layer):
    """Hugging Face's `hidden_states[select_layer]` as tokens [B, N, C] (class token dropped)."""
    if isinstance(model, (SiglipModel, CLIPModel)):  # the vision tower alone, to get its hidden states
        tower = (SiglipVisionModel if isinstance(model, SiglipModel) else CLIPVisionModel)(model.config.vision_config)
        tower.vision_model.load_state_dict(model.vision_model.state_dict())
        model = tower.eval()
    if isinstance(model, ResNetForImageClassification):
        model = model.resnet
    with torch.no_grad():
        state = model(pixel_values=torch.from_numpy(x), output_hidden_states=True).hidden_states[select_layer].numpy()
    if state.ndim == 4:  # resnet map [B, C, h, w] -> row-major tokens
        return state.reshape(state.shape[0], state.shape[1], -1).transpose(0, 2, 1)
    if isinstance(model, CLIPVisionModel):
        return state[:, 1:]
    return state


def images(size, batch=2, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize(
    "name, select_layer",
    [
        ("siglip_vision", -2), ("siglip_vision", -1), ("siglip_full", -2),
        ("clip_vision", -2), ("clip_vision", -1), ("clip_vision", 1), ("clip_full", -2),
    ],
)
def test_vit_matches_transformers_hidden_state(hf_dirs, name, select_layer):
    path, model = hf_dirs[name]
    encoder = load_hf_vision(path, select_layer=select_layer)
    x = images(32)
    out = encoder(ms.Tensor(x)).asnumpy()
    expected = hf_hidden_state(model, x, select_layer)
    assert out.shape == expected.shape == (2, 16, 32)  # CLIP: 17 tokens with the class token, 16 out
    np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)


def test_siglip_last_layer_is_the_post_layernormed_output(hf_dirs):
    path, model = hf_dirs["siglip_vision"]
    x = images(32)
    with torch.no_grad():
        expected = model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    np.testing.assert_allclose(load_hf_vision(path, select_layer=-1)(ms.Tensor(x)).asnumpy(), expected, atol=ATOL)


@pytest.mark.parametrize(
    "name, select_layer, size",
    [
        ("resnet", None, 36), ("resnet", -2, 36), ("resnet", 0, 36),
        ("resnet_classifier", None, 32), ("resnet_bottleneck_stride", None, 33),
    ],
)
def test_resnet_matches_transformers_hidden_state(hf_dirs, name, select_layer, size):
    path, model = hf_dirs[name]
    encoder = load_hf_vision(path, select_layer=select_layer, image_size=size)
    x = images(size)
    out = encoder(ms.Tensor(x)).asnumpy()
    expected = hf_hidden_state(model, x, -1 if select_layer is None else select_layer)
    assert out.shape == expected.shape == (2, encoder.num_tokens, encoder.feature_dim)
    np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name, size", [("siglip_vision", 32), ("clip_vision", 32), ("resnet", 36)])
def test_graph_mode_matches_transformers(hf_dirs, name, size):
    path, model = hf_dirs[name]
    encoder = load_hf_vision(path, image_size=size if name == "resnet" else None)
    x = images(size, seed=3)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        out = encoder(ms.Tensor(x)).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(out, hf_hidden_state(model, x, -1 if name == "resnet" else -2), atol=ATOL, rtol=0)


def test_default_select_layer_is_second_to_last_for_vits_and_last_stage_for_resnet(hf_dirs):
    assert load_hf_vision(hf_dirs["clip_vision"][0]).config.select_layer == -2
    assert len(load_hf_vision(hf_dirs["clip_vision"][0]).encoder.layers) == 2
    resnet = load_hf_vision(hf_dirs["resnet"][0])
    assert resnet.config.select_layer == -1 and resnet.feature_dim == 32


def test_loaded_encoder_is_frozen_and_in_the_requested_dtype(hf_dirs):
    path, model = hf_dirs["siglip_vision"]
    encoder = load_hf_vision(path, dtype=ms.float16)
    assert all(p.dtype == ms.float16 and not p.requires_grad for p in encoder.get_parameters())
    x = images(32)
    out = encoder(ms.Tensor(x))
    assert out.dtype == ms.float16
    np.testing.assert_allclose(out.asnumpy().astype(np.float32), hf_hidden_state(model, x, -2), atol=2e-2, rtol=0)


def test_preprocessor_config_supplies_image_size_and_normalisation(hf_dirs, tmp_path):
    path, _ = hf_dirs["resnet"]
    for name in os.listdir(path):
        os.symlink(os.path.join(path, name), tmp_path / name)
    processor = {"crop_size": {"height": 40, "width": 40}, "image_mean": [0.1, 0.2, 0.3], "image_std": [1, 2, 3]}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    config = load_hf_vision(tmp_path).config
    assert (config.image_size, config.image_mean, config.image_std) == (40, [0.1, 0.2, 0.3], [1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    "model_type, hf_config_class",
    [("siglip_vision_model", SiglipVisionConfig), ("clip_vision_model", CLIPVisionConfig)],
)
def test_omitted_hf_config_keys_take_transformers_defaults(model_type, hf_config_class):
    ours = vision_config_from_hf({"model_type": model_type})
    hf = hf_config_class()
    assert (ours.hidden_size, ours.intermediate_size, ours.num_layers, ours.num_heads) == (
        hf.hidden_size, hf.intermediate_size, hf.num_hidden_layers, hf.num_attention_heads)
    assert (ours.image_size, ours.patch_size, ours.hidden_act, ours.layer_norm_eps) == (
        hf.image_size, hf.patch_size, hf.hidden_act, hf.layer_norm_eps)


def test_omitted_resnet_keys_take_transformers_defaults():
    ours, hf = vision_config_from_hf({"model_type": "resnet"}), ResNetConfig()
    assert (ours.embedding_size, ours.hidden_sizes, ours.depths, ours.layer_type, ours.hidden_act) == (
        hf.embedding_size, hf.hidden_sizes, hf.depths, hf.layer_type, hf.hidden_act)
    assert (ours.downsample_in_first_stage, ours.downsample_in_bottleneck) == (
        hf.downsample_in_first_stage, hf.downsample_in_bottleneck)


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(CheckpointError, match=r"unsupported vision model_type 'vit'.*clip_vision_model.*resnet"):
        load_hf_vision(tmp_path)


def copy_dir(src, dst, skip=()):
    for name in os.listdir(src):
        if name not in skip:
            os.symlink(os.path.join(src, name), dst / name)


def test_missing_tensor_is_named(hf_dirs, tmp_path):
    path, _ = hf_dirs["siglip_vision"]
    copy_dir(path, tmp_path, skip=("model.safetensors",))
    state = load_file(os.path.join(path, "model.safetensors"))
    del state["vision_model.encoder.layers.1.mlp.fc2.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensors \[vision_model\.encoder\.layers\.1\.mlp\.fc2\.bias\]"):
        load_hf_vision(tmp_path)


def test_shape_mismatch_is_named(hf_dirs, tmp_path):
    path, _ = hf_dirs["clip_vision"]
    copy_dir(path, tmp_path, skip=("config.json",))
    config = json.loads(open(os.path.join(path, "config.json")).read())
    config["intermediate_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(config))
    mismatch = r"vision_model\.encoder\.layers\.0\.mlp\.fc1\.weight: checkpoint \(48, 32\) vs model \(40, 32\)"
    with pytest.raises(CheckpointError, match=mismatch):
        load_hf_vision(tmp_path)


def test_checkpoint_deeper_than_config_is_an_error(hf_dirs, tmp_path):
    path, _ = hf_dirs["siglip_vision"]
    copy_dir(path, tmp_path, skip=("config.json",))
    config = json.loads(open(os.path.join(path, "config.json")).read())
    config["num_hidden_layers"] = 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unexpected tensors.*vision_model\.encoder\.layers\.2\."):
        load_hf_vision(tmp_path, select_layer=-1)


def test_unused_tensors_are_skipped_but_nothing_else(hf_dirs):
    path, _ = hf_dirs["clip_vision"]
    state = load_file(os.path.join(path, "model.safetensors"))
    config = vision_config_from_hf(json.load(open(os.path.join(path, "config.json"))))
    # older checkpoints also store the position_ids buffer; skipping it (and layer 2, post_layernorm) is fine
    state["vision_model.embeddings.position_ids"] = np.arange(17)[None]
    load_encoder_weights(build_vision_encoder(config), state, config)
    state["vision_model.encoder.layers.0.self_attn.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match=r"unexpected tensors.*self_attn\.extra\.weight"):
        load_encoder_weights(build_vision_encoder(config), state, config)


def test_timm_siglip_layout_is_hugging_faces_with_post_layernorm_as_the_final_norm():
    """The release's timm tower run on a Hugging Face SigLIP's weights, renamed by `hf_siglip_to_timm`
    (post_layernorm -> norm, q/k/v fused), gives Hugging Face's last_hidden_state: the same norm."""
    from timm_siglip_reference import TimmSiglipTower

    from eve_ms.convert.hf_vision import hf_siglip_to_timm, timm_siglip_to_hf

    torch.manual_seed(3)
    hf = SiglipVisionModel(SiglipVisionConfig(**VIT)).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            param.add_(0.2 * torch.randn(param.shape))  # post_layernorm away from identity
    hf_state = {k: v.numpy() for k, v in hf.state_dict().items() if not k.startswith("vision_model.head.")}
    hf_state.pop("vision_model.embeddings.position_ids", None)
    timm_state = hf_siglip_to_timm(hf_state)
    assert "norm.weight" in timm_state and "blocks.2.attn.qkv.weight" in timm_state
    tower = TimmSiglipTower(32, 8, 32, 3, 4, 48, act=torch.nn.GELU(approximate="tanh"))  # HF SigLIP's activation
    missing, unexpected = tower.load_state_dict({k: torch.from_numpy(v) for k, v in timm_state.items()}, strict=False)
    assert not unexpected and all(name.startswith("attn_pool.") for name in missing)
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(tower(torch.from_numpy(x)).numpy(),
                                   hf(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy(), atol=1e-5)
    back = timm_siglip_to_hf(timm_state)
    assert set(back) == set(hf_state)
    for name, value in hf_state.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)
