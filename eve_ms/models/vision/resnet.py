"""ResNet (Hugging Face `ResNetModel` semantics and weight names) as a frozen token encoder.

The selected stage's feature map [B, C, h, w] becomes h*w tokens of width C, row-major.
`select_layer` indexes Hugging Face's `hidden_states` (0 = embedder output, i = stage i);
the default -1 is the last stage, and stages after the selected one are not built.

Hugging Face's flags: `downsample_in_first_stage` makes the first stage stride 2 (else 1;
later stages are always stride 2); `downsample_in_bottleneck` puts a bottleneck's stride on
its first 1x1 conv instead of the 3x3 conv. BatchNorm always normalises with its running
statistics (`use_batch_statistics=False`): the encoder is frozen in every stage.
"""
from __future__ import annotations

from mindspore import nn

from eve_ms.config import VisionConfig
from eve_ms.mindformers_env import mindformers_registry
from eve_ms.models.vision.base import VisionEncoder, activation

MindFormerModuleType, MindFormerRegister = mindformers_registry()

BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default, which Hugging Face ResNet uses


class ConvLayer(nn.Cell):
    """conv (no bias, 'same'-style padding k//2) -> BatchNorm -> activation (optional)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, act=None):
        super().__init__()
        self.convolution = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, pad_mode="pad", padding=kernel_size // 2,
            has_bias=False,
        )
        self.normalization = nn.BatchNorm2d(out_channels, eps=BN_EPS, use_batch_statistics=False)
        self.activation = activation(act) if act else nn.Identity()

    def construct(self, x):
        return self.activation(self.normalization(self.convolution(x)))


def conv_layer_params(in_channels, out_channels, kernel_size) -> int:
    return in_channels * out_channels * kernel_size**2 + 2 * out_channels


class ShortCut(nn.Cell):
    """1x1 conv + BatchNorm projecting the residual when width or resolution changes."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.convolution = nn.Conv2d(in_channels, out_channels, 1, stride=stride, pad_mode="valid", has_bias=False)
        self.normalization = nn.BatchNorm2d(out_channels, eps=BN_EPS, use_batch_statistics=False)

    def construct(self, x):
        return self.normalization(self.convolution(x))


class ResidualLayer(nn.Cell):
    """act(layer(x) + shortcut(x)); `layer` is the bottleneck (1x1, 3x3, 1x1) or basic (3x3, 3x3) stack."""

    def __init__(self, config: VisionConfig, in_channels, out_channels, stride):
        super().__init__()
        act = config.hidden_act
        needs_shortcut = in_channels != out_channels or stride != 1
        self.shortcut = ShortCut(in_channels, out_channels, stride) if needs_shortcut else nn.Identity()
        if config.layer_type == "bottleneck":
            reduced = out_channels // 4
            first_stride, mid_stride = (stride, 1) if config.downsample_in_bottleneck else (1, stride)
            convs = [
                ConvLayer(in_channels, reduced, 1, first_stride, act),
                ConvLayer(reduced, reduced, 3, mid_stride, act),
                ConvLayer(reduced, out_channels, 1),
            ]
        else:
            convs = [ConvLayer(in_channels, out_channels, 3, stride, act), ConvLayer(out_channels, out_channels, 3)]
        self.layer = nn.SequentialCell(convs)
        self.activation = activation(act)

    def construct(self, x):
        return self.activation(self.layer(x) + self.shortcut(x))

    @staticmethod
    def param_count(config: VisionConfig, in_channels, out_channels, stride) -> int:
        count = conv_layer_params(in_channels, out_channels, 1) if in_channels != out_channels or stride != 1 else 0
        if config.layer_type == "bottleneck":
            reduced = out_channels // 4
            return count + (
                conv_layer_params(in_channels, reduced, 1)
                + conv_layer_params(reduced, reduced, 3)
                + conv_layer_params(reduced, out_channels, 1)
            )
        return count + conv_layer_params(in_channels, out_channels, 3) + conv_layer_params(
            out_channels, out_channels, 3)


def stage_plan(config: VisionConfig) -> list:
    """(in_channels, out_channels, stride, depth) of every stage that is built."""
    widths = [config.embedding_size] + list(config.hidden_sizes)
    plan = []
    for s in range(config.layers_used):
        stride = 2 if s > 0 or config.downsample_in_first_stage else 1
        plan.append((widths[s], widths[s + 1], stride, config.depths[s]))
    return plan


class Stage(nn.Cell):
    def __init__(self, config: VisionConfig, in_channels, out_channels, stride, depth):
        super().__init__()
        blocks = [ResidualLayer(config, in_channels, out_channels, stride)]
        blocks += [ResidualLayer(config, out_channels, out_channels, 1) for _ in range(depth - 1)]
        self.layers = nn.SequentialCell(blocks)

    def construct(self, x):
        return self.layers(x)


class Embedder(nn.Cell):
    """7x7 stride-2 conv/BN/act, then 3x3 stride-2 max-pool (padding 1)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.embedder = ConvLayer(config.num_channels, config.embedding_size, 7, 2, config.hidden_act)
        self.pooler = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)

    def construct(self, pixels):
        return self.pooler(self.embedder(pixels))


class Stages(nn.Cell):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.stages = nn.CellList([Stage(config, *spec) for spec in stage_plan(config)])

    def construct(self, x):
        for stage in self.stages:
            x = stage(x)
        return x


@MindFormerRegister.register(MindFormerModuleType.ENCODER, alias="resnet")
class ResNetVisionEncoder(VisionEncoder):
    """pixels [B, 3, S, S] -> selected stage's map as tokens [B, h*w, C]."""

    def __init__(self, config: VisionConfig):
        super().__init__(config)
        if config.layer_type not in ("bottleneck", "basic"):
            raise ValueError(f"unsupported resnet layer_type {config.layer_type!r} (supported: bottleneck, basic)")
        if len(config.depths) != len(config.hidden_sizes):
            raise ValueError(
                f"resnet depths {config.depths} and hidden_sizes {config.hidden_sizes} must have the same length"
            )
        self.embedder = Embedder(config)
        self.encoder = Stages(config)
        self.freeze()

    def encode(self, pixels):
        self.check_pixels(pixels)
        x = self.encoder(self.embedder(pixels.astype(self.embedder.embedder.convolution.weight.dtype)))
        batch, channels = x.shape[0], x.shape[1]
        return x.reshape(batch, channels, -1).transpose(0, 2, 1)

    @classmethod
    def param_count(cls, config: VisionConfig) -> int:
        count = conv_layer_params(config.num_channels, config.embedding_size, 7)
        for in_channels, out_channels, stride, depth in stage_plan(config):
            count += ResidualLayer.param_count(config, in_channels, out_channels, stride)
            count += (depth - 1) * ResidualLayer.param_count(config, out_channels, out_channels, 1)
        return count
