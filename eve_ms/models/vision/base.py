"""What every vision backbone shares: the `encode(pixels) -> [B, N, C]` contract, freezing, activations.

A backbone is one file: a `VisionEncoder` subclass registered with MindFormers'
registry under `MindFormerModuleType.ENCODER` (alias = `VisionConfig.backbone`), plus
its module name in `eve_ms.models.vision.BACKBONE_MODULES`.
"""
from __future__ import annotations

from mindspore import nn, ops

from eve_ms.config import VisionConfig


class QuickGELU(nn.Cell):
    """x * sigmoid(1.702 x): the activation of OpenAI's CLIP."""

    def construct(self, x):
        return x * ops.sigmoid(1.702 * x)


class SigmoidTanhGELU(nn.Cell):
    """GELU's tanh approximation (`gelu_pytorch_tanh`, SigLIP's activation) written as the identical
    x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)): on CPU, MindSpore's GeLU kernel is 4-5x slower than
    these few elementwise ops (about 50 ns an element, seconds per step for a SigLIP-L tower)."""

    def construct(self, x):
        return x * ops.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))


def activation(name: str) -> nn.Cell:
    """The activation cell for a Hugging Face `hidden_act` name (the tanh GELU's form chosen for the device)."""
    import mindspore as ms

    on_cpu = ms.get_context("device_target") == "CPU"
    table = {
        "gelu_pytorch_tanh": SigmoidTanhGELU if on_cpu else (lambda: nn.GELU(approximate=True)),
        "gelu": lambda: nn.GELU(approximate=False),
        "quick_gelu": QuickGELU,
        "relu": nn.ReLU,
    }
    if name not in table:
        raise ValueError(f"unsupported vision hidden_act {name!r} (supported: {', '.join(sorted(table))})")
    return table[name]()


class VisionEncoder(nn.Cell):
    """A frozen image encoder: pixels [B, C_in, H, W] float -> features [B, N, C].

    H = W = `config.image_size` (static shapes); N = `config.num_tokens`, C = `config.feature_dim`.
    Subclasses build their layers in `__init__`, call `self.freeze()` last, implement
    `encode` (which `construct` calls) and the pure-Python `param_count(config)`.
    """

    def __init__(self, config: VisionConfig):
        super().__init__()
        missing = [name for name in ("hidden_act", "select_layer") if getattr(config, name) is None]
        if missing:
            raise ValueError(f"vision config for backbone {config.backbone!r} leaves {missing} unset")
        self.config = config
        self.image_size = config.image_size
        self.num_channels = config.num_channels
        self.num_tokens = config.num_tokens
        self.feature_dim = config.feature_dim

    def construct(self, pixels):
        return self.encode(pixels)

    def encode(self, pixels):
        """pixels [B, C_in, S, S] -> features [B, N, C]; subclasses implement it (graph mode can call it too)."""
        raise NotImplementedError

    def freeze(self) -> "VisionEncoder":
        """Mark every weight untrainable: the encoder is frozen in every stage.

        The backbones have no dropout and ResNet's BatchNorm always uses its running
        statistics, so `set_train` on a surrounding model does not change their output.
        """
        for param in self.get_parameters():
            param.requires_grad = False
        return self

    @classmethod
    def param_count(cls, config: VisionConfig) -> int:
        """Weights the encoder instantiates for `config`, computed without building it.

        Counted like Hugging Face's `num_parameters()`: BatchNorm running statistics are
        buffers, not weights.
        """
        raise NotImplementedError

    def check_pixels(self, pixels):
        """Static-shape guard: a wrong image size is a clear error, not a broadcasting failure deep inside."""
        expected = (self.num_channels, self.image_size, self.image_size)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(
                f"vision encoder expects pixels [B, {self.num_channels}, {self.image_size}, "
                f"{self.image_size}], got {pixels.shape}"
            )
