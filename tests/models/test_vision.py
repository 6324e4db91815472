"""Vision encoders: the shared interface, frozen weights, parameter counts, registry, config geometry."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from eve_ms.config import BACKBONE_DEFAULTS, ConfigError, VisionConfig
from eve_ms.models.vision import build_vision_encoder, registered_backbones, vision_param_count

VIT = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4)
RESNET = dict(image_size=36, embedding_size=8, hidden_sizes=[16, 24, 32], depths=[1, 2, 1])

TINY = {
    "siglip default": VisionConfig(backbone="siglip", **VIT),
    "siglip last layer": VisionConfig(backbone="siglip", select_layer=-1, **VIT),
    "clip default": VisionConfig(backbone="clip", **VIT),
    "clip embeddings": VisionConfig(backbone="clip", select_layer=0, **VIT),
    "resnet default": VisionConfig(backbone="resnet", **RESNET),
    "resnet stage 2": VisionConfig(backbone="resnet", select_layer=2, **RESNET),
    "resnet flags": VisionConfig(
        backbone="resnet", downsample_in_first_stage=True, downsample_in_bottleneck=True, **RESNET
    ),
    "resnet basic": VisionConfig(backbone="resnet", layer_type="basic", **RESNET),
}


def pixels(config, batch=2, seed=0):
    shape = (batch, 3, config.image_size, config.image_size)
    return ms.Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def weight_count(cell):
    """Weights as Hugging Face counts them: BatchNorm running statistics are buffers."""
    return sum(p.size for p in cell.get_parameters() if not p.name.endswith(("moving_mean", "moving_variance")))


@pytest.mark.parametrize("name", list(TINY))
def test_encoder_emits_config_token_grid_and_width(name):
    config = TINY[name]
    encoder = build_vision_encoder(config)
    out = encoder.encode(pixels(config))
    assert out.shape == (2, config.num_tokens, config.feature_dim)
    assert out.dtype == ms.float32


@pytest.mark.parametrize("name", list(TINY))
def test_param_count_equals_instantiated_weights(name):
    config = TINY[name]
    assert vision_param_count(config) == weight_count(build_vision_encoder(config))


@pytest.mark.parametrize("name", ["siglip default", "clip default", "resnet default"])
def test_every_encoder_weight_is_frozen(name):
    params = build_vision_encoder(TINY[name]).get_parameters()
    assert all(not p.requires_grad for p in params)


def test_layers_after_the_selected_one_are_not_built():
    # select_layer -2 of a 3-layer ViT runs layers 0 and 1 only; SigLIP's post-layernorm only with the last layer
    assert len(build_vision_encoder(TINY["siglip default"]).encoder.layers) == 2
    last = build_vision_encoder(TINY["siglip last layer"])
    assert len(last.encoder.layers) == 3 and hasattr(last, "post_layernorm")
    assert len(build_vision_encoder(TINY["resnet stage 2"]).encoder.stages) == 2


def test_resnet_batchnorm_uses_running_statistics_in_training_mode():
    config = TINY["resnet default"]
    encoder = build_vision_encoder(config)
    running = {p.name: p.asnumpy().copy() for p in encoder.get_parameters() if "moving_" in p.name}
    x = pixels(config)
    inference = encoder(x).asnumpy()
    encoder.set_train(True)  # what a surrounding model does in every training stage
    training = encoder(x).asnumpy()
    np.testing.assert_array_equal(training, inference)
    for p in encoder.get_parameters():
        if p.name in running:
            np.testing.assert_array_equal(p.asnumpy(), running[p.name], err_msg=p.name)


def test_encode_inside_a_graph_mode_cell_matches_pynative():
    config = TINY["clip default"]
    encoder = build_vision_encoder(config)

    class Wrapper(nn.Cell):
        def __init__(self, vision):
            super().__init__()
            self.vision = vision

        def construct(self, x):
            return self.vision.encode(x) * 2.0

    x = pixels(config)
    eager = Wrapper(encoder)(x).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        graph = Wrapper(encoder)(x).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(graph, eager, atol=1e-5, rtol=0)


def test_wrong_image_size_is_a_clear_error():
    encoder = build_vision_encoder(TINY["siglip default"])
    with pytest.raises(ValueError, match=r"expects pixels \[B, 3, 32, 32\]"):
        encoder(ms.Tensor(np.zeros((1, 3, 16, 16), np.float32)))


def test_unknown_backbone_names_the_registered_ones():
    assert {"siglip", "clip", "resnet"} <= set(registered_backbones())
    with pytest.raises(ConfigError, match=r"unknown vision backbone 'vit_h'.*clip, resnet, siglip"):
        build_vision_encoder(VisionConfig(backbone="vit_h", hidden_act="gelu", select_layer=-2, **VIT))
    with pytest.raises(ConfigError, match="unknown vision backbone"):
        vision_param_count(VisionConfig(backbone="vit_h", select_layer=-2))


def test_select_layer_outside_the_hidden_states_is_rejected():
    with pytest.raises(ConfigError, match="select_layer=4"):
        VisionConfig(backbone="siglip", select_layer=4, **VIT)
    with pytest.raises(ConfigError, match="select_layer=-5"):
        VisionConfig(backbone="resnet", select_layer=-5, **RESNET)


def test_backbone_defaults_fill_unset_fields():
    siglip, clip, resnet = (VisionConfig(backbone=b) for b in ("siglip", "clip", "resnet"))
    assert (siglip.select_layer, siglip.hidden_act, siglip.image_mean) == (-2, "gelu_pytorch_tanh", [0.5] * 3)
    assert (clip.select_layer, clip.hidden_act, clip.layer_norm_eps) == (-2, "quick_gelu", 1e-5)
    assert clip.image_std == pytest.approx([0.26862954, 0.26130258, 0.27577711])
    assert (resnet.select_layer, resnet.hidden_act, resnet.image_mean) == (-1, "relu", [0.485, 0.456, 0.406])
    explicit = VisionConfig(backbone="clip", image_mean=[0.1, 0.2, 0.3], select_layer=-1)
    assert explicit.image_mean == [0.1, 0.2, 0.3] and explicit.select_layer == -1
    assert BACKBONE_DEFAULTS["clip"]["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_resnet50_geometry_matches_the_paper_alternative():
    # ResNet-50 at 224: 7x7 map of 2048 channels; at 336 the odd sides round up (padding), 11x11
    resnet50 = VisionConfig(backbone="resnet", image_size=224)
    assert (resnet50.num_tokens, resnet50.feature_dim) == (49, 2048)
    assert VisionConfig(backbone="resnet", image_size=336).grid_size == 11
    clip_l = VisionConfig(backbone="clip", image_size=336, patch_size=14)
    assert clip_l.num_tokens == 576  # class token dropped
