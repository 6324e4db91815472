"""Vision adapters: parity with PyTorch references written from the architecture description, shapes, counts."""
import math

import mindspore as ms
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

from eve_ms.config import AdapterConfig, ConfigError, VisionConfig
from eve_ms.models.adapter import adapter_param_count, build_adapter, reference_name, squeeze_channels

# --------------------------------------------------------------------------- torch references
# Module paths follow MobileVLM's / LLaVA's projectors, so `reference_name` is exercised too.


class TorchChannelLayerNorm(tnn.LayerNorm):
    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


class TorchSqueezeExcite(tnn.Module):
    def __init__(self, channels, squeezed):
        super().__init__()
        self.fc1 = tnn.Conv2d(channels, squeezed, 1)
        self.fc2 = tnn.Conv2d(squeezed, channels, 1)

    def forward(self, x):
        scale = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(scale))))


class TorchInvertedResidual(tnn.Module):
    def __init__(self, channels, stride, squeezed, eps=1e-5):
        super().__init__()
        self.block = tnn.Sequential(
            tnn.Sequential(
                tnn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
                TorchChannelLayerNorm(channels, eps=eps),
                tnn.Hardswish(),
            ),
            TorchSqueezeExcite(channels, squeezed),
            tnn.Sequential(tnn.Conv2d(channels, channels, 1, bias=False), TorchChannelLayerNorm(channels, eps=eps)),
        )
        self.residual = stride == 1

    def forward(self, x):
        y = self.block(x)
        return y + x if self.residual else y


def to_grid(x):
    b, n, c = x.shape
    side = math.isqrt(n)
    return x.permute(0, 2, 1).reshape(b, c, side, side)


class TorchLDP(tnn.Module):
    def __init__(self, in_dim, out_dim, squeezed):
        super().__init__()
        self.model = tnn.Module()
        self.model.mlp = tnn.Sequential(
            tnn.Identity(), tnn.Linear(in_dim, out_dim), tnn.GELU(), tnn.Linear(out_dim, out_dim)
        )
        self.model.mb_block = tnn.Sequential(
            tnn.Identity(), TorchInvertedResidual(out_dim, 1, squeezed), TorchInvertedResidual(out_dim, 2, squeezed)
        )

    def forward(self, x):
        x = self.model.mb_block(to_grid(self.model.mlp(x)))
        return x.flatten(2).permute(0, 2, 1)


class TorchLDPv2(tnn.Module):
    def __init__(self, in_dim, out_dim, pooled):
        super().__init__()
        self.pooled = pooled
        self.mlp = tnn.Module()
        self.mlp.mlp = tnn.Sequential(tnn.Linear(in_dim, out_dim), tnn.GELU(), tnn.Linear(out_dim, out_dim))
        self.peg = tnn.Module()
        self.peg.peg = tnn.Sequential(tnn.Conv2d(out_dim, out_dim, 3, 1, 1, bias=True, groups=out_dim))

    def forward(self, x):
        grid = F.adaptive_avg_pool2d(to_grid(self.mlp.mlp(x)), self.pooled)
        return (self.peg.peg(grid) + grid).flatten(2).transpose(1, 2)


def torch_mlp2x(in_dim, out_dim):
    return tnn.Sequential(tnn.Linear(in_dim, out_dim), tnn.GELU(), tnn.Linear(out_dim, out_dim))


def randomise(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module


def copy_weights(adapter_type, ours, ref):
    state = ref.state_dict()
    for name, param in ours.parameters_and_names():
        value = state[reference_name(adapter_type, name)].numpy()
        assert value.shape == tuple(param.shape), name
        param.set_data(ms.Tensor(value))


def run_both(adapter_type, ours, ref, grid, in_dim, seed=1):
    x = np.random.default_rng(seed).standard_normal((2, grid * grid, in_dim)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    return ours(ms.Tensor(x)).asnumpy(), expected


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("grid, out_grid", [(24, 12), (5, 3)])
def test_ldp_matches_torch_reference_and_halves_the_grid(grid, out_grid):
    in_dim, out_dim = 16, 32
    ours = build_adapter(AdapterConfig(type="ldp"), in_dim, out_dim, grid)
    ref = randomise(TorchLDP(in_dim, out_dim, squeezed=out_dim // 4)).eval()
    copy_weights("ldp", ours, ref)
    out, expected = run_both("ldp", ours, ref, grid, in_dim)
    assert out.shape == (2, out_grid * out_grid, out_dim)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("grid, pool_grid, out_grid", [(24, None, 12), (7, None, 4), (8, 3, 3)])
def test_ldpv2_matches_torch_reference_with_adaptive_pool(grid, pool_grid, out_grid):
    in_dim, out_dim = 16, 24
    ours = build_adapter(AdapterConfig(type="ldpv2", pool_grid=pool_grid), in_dim, out_dim, grid)
    ref = randomise(TorchLDPv2(in_dim, out_dim, out_grid)).eval()
    copy_weights("ldpv2", ours, ref)
    out, expected = run_both("ldpv2", ours, ref, grid, in_dim)
    assert out.shape == (2, out_grid * out_grid, out_dim)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_mlp2x_gelu_matches_torch_reference_and_keeps_token_count():
    ours = build_adapter(AdapterConfig(type="mlp2x_gelu"), 16, 24, 6)
    ref = randomise(torch_mlp2x(16, 24)).eval()
    copy_weights("mlp2x_gelu", ours, ref)
    out, expected = run_both("mlp2x_gelu", ours, ref, 6, 16)
    assert out.shape == (2, 36, 24)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("adapter_type", ["ldp", "ldpv2", "mlp2x_gelu"])
def test_param_count_equals_built_cell_and_torch_reference(adapter_type):
    in_dim, out_dim = 48, 40  # 40 // 4 = 10 rounds to an SE width of 16, as torchvision does
    config = AdapterConfig(type=adapter_type)
    ours = build_adapter(config, in_dim, out_dim, 6)
    ref = {
        "ldp": lambda: TorchLDP(in_dim, out_dim, squeezed=16),
        "ldpv2": lambda: TorchLDPv2(in_dim, out_dim, 3),
        "mlp2x_gelu": lambda: torch_mlp2x(in_dim, out_dim),
    }[adapter_type]()
    built = sum(p.size for p in ours.get_parameters())
    assert adapter_param_count(config, in_dim, out_dim) == built == sum(p.numel() for p in ref.parameters())
    assert all(p.requires_grad for p in ours.get_parameters())  # the adapter is what stage 1 trains


def test_squeeze_width_follows_torchvision_rounding():
    # torchvision's _make_divisible(c // 4, 8): nearest multiple of 8, bumped up if it lost more than 10%
    assert [squeeze_channels(c) for c in (2048, 32, 40, 24, 100)] == [512, 8, 16, 8, 24]


@pytest.mark.parametrize("adapter_type", ["ldp", "ldpv2", "mlp2x_gelu"])
@pytest.mark.parametrize("image_size, patch_size", [(384, 16), (100, 4), (28, 14)])
def test_num_output_tokens_agrees_with_the_cell(adapter_type, image_size, patch_size):
    vision = VisionConfig(image_size=image_size, patch_size=patch_size)
    config = AdapterConfig(type=adapter_type)
    cell = build_adapter(config, 8, 8, vision.grid_size)
    x = ms.Tensor(np.zeros((1, vision.num_tokens, 8), np.float32))
    assert cell(x).shape[1] == config.num_output_tokens(vision) == cell.num_output_tokens


def test_paper_setting_maps_576_tokens_to_144():
    vision = VisionConfig()  # SigLIP-L 384/16: 24x24 patches
    assert vision.num_tokens == 576 and AdapterConfig(type="ldp").num_output_tokens(vision) == 144


@pytest.mark.parametrize("adapter_type", ["ldp", "ldpv2"])
def test_graph_mode_matches_pynative(adapter_type):
    cell = build_adapter(AdapterConfig(type=adapter_type), 8, 16, 6)
    x = ms.Tensor(np.random.default_rng(2).standard_normal((2, 36, 8)).astype(np.float32))
    eager = cell(x).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        graph = cell(x).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(graph, eager, atol=1e-5, rtol=0)


def test_bad_adapter_config_and_input_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown adapter type 'qformer'"):
        build_adapter(AdapterConfig(type="qformer"), 8, 8, 4)
    with pytest.raises(ConfigError, match="unknown adapter type"):
        adapter_param_count(AdapterConfig(type="qformer"), 8, 8)
    with pytest.raises(ConfigError, match="pool_grid=9"):
        build_adapter(AdapterConfig(type="ldpv2", pool_grid=9), 8, 8, 4)
    cell = build_adapter(AdapterConfig(type="ldp"), 8, 8, 4)
    with pytest.raises(ValueError, match=r"expects features \[B, 16, C\]"):
        cell(ms.Tensor(np.zeros((1, 15, 8), np.float32)))
