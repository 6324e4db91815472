"""Vision adapters (projectors): encoder features [B, g*g, C_in] -> LLM-width image tokens [B, M, C_out].

| type | layers | tokens out |
|---|---|---|
| `mlp2x_gelu` (LLaVA-1.5) | Linear-GELU-Linear | g*g |
| `ldp` (MobileVLM, the paper's adapter) | Linear-GELU-Linear, then two MobileNetV3 inverted-residual blocks on the token grid, the second with stride 2 | ceil(g/2)^2 |
| `ldpv2` (MobileVLM V2) | Linear-GELU-Linear, adaptive average pool, depthwise-conv position injection + residual | pool_grid^2, default ceil(g/2)^2 |

Tokens are a row-major g x g grid (the encoders' order). One LDP block, as MobileVLM
builds it from torchvision's MobileNetV3 `InvertedResidual` (expansion ratio 1, so no
expansion conv) with timm's channel LayerNorm:
3x3 depthwise conv (no bias) -> LayerNorm over channels -> hard-swish -> squeeze-excite
(global average, 1x1 conv C->S, ReLU, 1x1 conv S->C, hard-sigmoid gate; S = C/4 rounded to a
multiple of 8) -> 1x1 conv (no bias) -> LayerNorm over channels, plus the input when the
stride is 1. Odd grids: padding 1 makes the stride-2 block emit ceil(g/2) per side (25 -> 13);
LDPv2's pool uses PyTorch's adaptive-pool windows, overlapping when g is not a multiple.
MobileVLM also rounds the LDP width to a multiple of 8; every real LLM width already is one,
so the width is used as given here.

`reference_name` maps our parameter names to MobileVLM's / LLaVA's `mm_projector` names.
"""
from __future__ import annotations

import re

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from eve_ms.config import AdapterConfig, ConfigError


def squeeze_channels(channels: int, divisor: int = 8) -> int:
    """torchvision's SE width: channels // 4 rounded to the nearest multiple of 8, at least 8, never < 90%."""
    target = channels // 4
    rounded = max(divisor, (target + divisor // 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * target else rounded


class MLP(nn.Cell):
    """Linear(in, out) - exact GELU - Linear(out, out), applied per token."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Dense(in_dim, out_dim)
        self.act = nn.GELU(approximate=False)
        self.fc2 = nn.Dense(out_dim, out_dim)

    def construct(self, x):
        return self.fc2(self.act(self.fc1(x)))


def mlp_params(in_dim: int, out_dim: int) -> int:
    return in_dim * out_dim + out_dim + out_dim * out_dim + out_dim


class ChannelLayerNorm(nn.Cell):
    """LayerNorm over the channel axis of an NCHW map (each pixel normalised on its own)."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = ms.Parameter(ops.ones(channels, ms.float32), name="weight")
        self.bias = ms.Parameter(ops.zeros(channels, ms.float32), name="bias")

    def construct(self, x):
        mean = x.mean(axis=1, keep_dims=True)
        centred = x - mean
        var = (centred * centred).mean(axis=1, keep_dims=True)
        return centred * ops.rsqrt(var + self.eps) * self.weight.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1)


class SqueezeExcite(nn.Cell):
    """Channel gate: x * hardsigmoid(fc2(relu(fc1(mean_hw(x)))))."""

    def __init__(self, channels: int):
        super().__init__()
        squeezed = squeeze_channels(channels)
        self.fc1 = nn.Conv2d(channels, squeezed, 1, pad_mode="valid", has_bias=True)
        self.fc2 = nn.Conv2d(squeezed, channels, 1, pad_mode="valid", has_bias=True)

    def construct(self, x):
        scale = x.mean(axis=(2, 3), keep_dims=True)
        scale = ops.hardsigmoid(self.fc2(ops.relu(self.fc1(scale))))
        return x * scale


class InvertedResidual(nn.Cell):
    """MobileNetV3 block with expansion 1, SE and hard-swish, LayerNorm instead of BatchNorm."""

    def __init__(self, channels: int, stride: int, eps: float):
        super().__init__()
        self.residual = stride == 1
        self.depthwise = nn.Conv2d(
            channels, channels, 3, stride=stride, pad_mode="pad", padding=1, group=channels, has_bias=False
        )
        self.depthwise_norm = ChannelLayerNorm(channels, eps)
        self.se = SqueezeExcite(channels)
        self.project = nn.Conv2d(channels, channels, 1, pad_mode="valid", has_bias=False)
        self.project_norm = ChannelLayerNorm(channels, eps)

    def construct(self, x):
        y = ops.hardswish(self.depthwise_norm(self.depthwise(x)))
        y = self.project_norm(self.project(self.se(y)))
        if self.residual:
            y = y + x
        return y


def inverted_residual_params(channels: int) -> int:
    squeezed = squeeze_channels(channels)
    se = channels * squeezed + squeezed + squeezed * channels + channels
    return 9 * channels + 2 * channels + se + channels * channels + 2 * channels


def adaptive_pool_matrix(grid: int, out_grid: int) -> np.ndarray:
    """[out_grid^2, grid^2] averaging matrix of PyTorch's AdaptiveAvgPool2d on a row-major token grid.

    Window i spans [floor(i*g/o), ceil((i+1)*g/o)); as a matmul it runs on every backend with static shapes.
    """
    rows = np.zeros((out_grid, grid), np.float64)
    for i in range(out_grid):
        start, end = (i * grid) // out_grid, -(-((i + 1) * grid) // out_grid)
        rows[i, start:end] = 1.0 / (end - start)
    return np.kron(rows, rows).astype(np.float32)


class Adapter(nn.Cell):
    """Base: checks the token count (static shapes) and converts between tokens and the grid."""

    def __init__(self, config: AdapterConfig, grid_size: int):
        super().__init__()
        self.grid_size = grid_size
        self.out_grid = config.output_grid(grid_size)
        self.num_output_tokens = self.out_grid**2

    def check_tokens(self, x):
        if x.ndim != 3 or x.shape[1] != self.grid_size * self.grid_size:
            raise ValueError(
                f"vision adapter expects features [B, {self.grid_size * self.grid_size}, C] "
                f"(a {self.grid_size}x{self.grid_size} grid), got {x.shape}"
            )

    @staticmethod
    def to_grid(x, grid: int):
        batch, _, channels = x.shape
        return x.transpose(0, 2, 1).reshape(batch, channels, grid, grid)

    @staticmethod
    def to_tokens(x):
        batch, channels = x.shape[0], x.shape[1]
        return x.reshape(batch, channels, -1).transpose(0, 2, 1)


class MLPAdapter(Adapter):
    def __init__(self, config: AdapterConfig, in_dim: int, out_dim: int, grid_size: int):
        super().__init__(config, grid_size)
        self.mlp = MLP(in_dim, out_dim)

    def construct(self, x):
        self.check_tokens(x)
        return self.mlp(x)


class LDPAdapter(Adapter):
    def __init__(self, config: AdapterConfig, in_dim: int, out_dim: int, grid_size: int):
        super().__init__(config, grid_size)
        self.mlp = MLP(in_dim, out_dim)
        eps = config.layer_norm_eps
        self.blocks = nn.SequentialCell([InvertedResidual(out_dim, 1, eps), InvertedResidual(out_dim, 2, eps)])

    def construct(self, x):
        self.check_tokens(x)
        x = self.to_grid(self.mlp(x), self.grid_size)
        return self.to_tokens(self.blocks(x))


class LDPv2Adapter(Adapter):
    def __init__(self, config: AdapterConfig, in_dim: int, out_dim: int, grid_size: int):
        super().__init__(config, grid_size)
        self.mlp = MLP(in_dim, out_dim)
        # a constant, not a Parameter: it is neither trained nor saved
        self.pool_matrix = ms.Tensor(adaptive_pool_matrix(grid_size, self.out_grid))
        self.peg = nn.Conv2d(out_dim, out_dim, 3, pad_mode="pad", padding=1, group=out_dim, has_bias=True)

    def construct(self, x):
        self.check_tokens(x)
        x = ops.matmul(self.pool_matrix.astype(x.dtype), self.mlp(x))
        grid = self.to_grid(x, self.out_grid)
        return self.to_tokens(self.peg(grid) + grid)


ADAPTERS = {"ldp": LDPAdapter, "ldpv2": LDPv2Adapter, "mlp2x_gelu": MLPAdapter}


def _check_type(config: AdapterConfig):
    if config.type not in ADAPTERS:
        raise ConfigError(f"unknown adapter type {config.type!r} (expected {', '.join(sorted(ADAPTERS))})")


def build_adapter(config: AdapterConfig, in_dim: int, out_dim: int, grid_size: int):
    """Adapter cell: [B, grid_size^2, in_dim] -> [B, config.output_grid(grid_size)^2, out_dim] (trainable)."""
    _check_type(config)
    if config.type == "ldpv2" and config.pool_grid is not None and not 0 < config.pool_grid <= grid_size:
        raise ConfigError(f"adapter.pool_grid={config.pool_grid} must be in 1..{grid_size} (the encoder's grid)")
    return ADAPTERS[config.type](config, in_dim, out_dim, grid_size)


def adapter_param_count(config: AdapterConfig, in_dim: int, out_dim: int) -> int:
    """Weights `build_adapter` instantiates (independent of the grid size)."""
    _check_type(config)
    count = mlp_params(in_dim, out_dim)
    if config.type == "ldp":
        count += 2 * inverted_residual_params(out_dim)
    elif config.type == "ldpv2":
        count += 9 * out_dim + out_dim
    return count


# Our parameter name -> MobileVLM's / LLaVA's name below `mm_projector.`, per adapter type.
_REFERENCE_PATTERNS = {
    "mlp2x_gelu": [(r"^mlp\.fc1\.", "0."), (r"^mlp\.fc2\.", "2.")],
    "ldp": [
        (r"^mlp\.fc1\.", "model.mlp.1."),
        (r"^mlp\.fc2\.", "model.mlp.3."),
        (r"^blocks\.(\d+)\.depthwise\.", "model.mb_block.<b>.block.0.0."),
        (r"^blocks\.(\d+)\.depthwise_norm\.", "model.mb_block.<b>.block.0.1."),
        (r"^blocks\.(\d+)\.se\.", "model.mb_block.<b>.block.1."),
        (r"^blocks\.(\d+)\.project\.", "model.mb_block.<b>.block.2.0."),
        (r"^blocks\.(\d+)\.project_norm\.", "model.mb_block.<b>.block.2.1."),
    ],
    "ldpv2": [(r"^mlp\.fc1\.", "mlp.mlp.0."), (r"^mlp\.fc2\.", "mlp.mlp.2."), (r"^peg\.", "peg.peg.0.")],
}


def reference_name(adapter_type: str, name: str) -> str:
    """MobileVLM / LLaVA `mm_projector` name of our parameter `name` (same shape, no transpose)."""
    for pattern, replacement in _REFERENCE_PATTERNS[adapter_type]:
        match = re.match(pattern, name)
        if match:
            if match.groups():
                replacement = replacement.replace("<b>", str(int(match.group(1)) + 1))  # index 0 is nn.Identity
            return replacement + name[match.end():]
    raise KeyError(f"no reference name for {adapter_type} adapter parameter {name!r}")
