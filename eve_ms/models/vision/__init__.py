"""Frozen vision encoders behind one interface, built by name through MindFormers' registry.

`build_vision_encoder(config)` returns a cell mapping pixels [B, 3, S, S] to features
[B, config.num_tokens, config.feature_dim], every weight frozen. Backbones register
themselves with `MindFormerRegister.register(MindFormerModuleType.ENCODER, alias=name)`;
adding one is a new module listed in `BACKBONE_MODULES`. Importing a backbone module
imports MindFormers (about 9 s), so this package does it only when a backbone is needed.
"""
from __future__ import annotations

import importlib

from eve_ms.config import ConfigError, VisionConfig

BACKBONE_MODULES = ("eve_ms.models.vision.vit", "eve_ms.models.vision.resnet")


def _registered() -> dict:
    """alias -> encoder class, for every registered `VisionEncoder`."""
    for module in BACKBONE_MODULES:
        importlib.import_module(module)
    from mindformers.tools.register import MindFormerModuleType, MindFormerRegister

    from eve_ms.models.vision.base import VisionEncoder

    entries = MindFormerRegister.registry.get(MindFormerModuleType.ENCODER, {})
    return {name: cls for name, cls in entries.items() if isinstance(cls, type) and issubclass(cls, VisionEncoder)}


def registered_backbones() -> list:
    return sorted(_registered())


def encoder_class(backbone: str):
    """The registered encoder class for a `VisionConfig.backbone` name."""
    from mindformers.tools.register import MindFormerModuleType, MindFormerRegister

    known = _registered()
    if backbone not in known:
        raise ConfigError(f"unknown vision backbone {backbone!r}; registered backbones: {', '.join(sorted(known))}")
    return MindFormerRegister.get_cls(MindFormerModuleType.ENCODER, backbone)


def build_vision_encoder(config: VisionConfig):
    """A frozen encoder cell for `config` (random weights; `eve_ms.convert.load_hf_vision` loads pretrained ones)."""
    return encoder_class(config.backbone)(config)


def vision_param_count(config: VisionConfig) -> int:
    """Weights `build_vision_encoder(config)` instantiates, computed from the config alone.

    Layers after `select_layer`, SigLIP's pooling head, CLIP's post-layernorm and SigLIP's
    (unless the last layer is selected) are not built, so they are not counted; BatchNorm
    running statistics are buffers, not counted either (as in Hugging Face's num_parameters()).
    """
    return encoder_class(config.backbone).param_count(config)


__all__ = ["BACKBONE_MODULES", "build_vision_encoder", "encoder_class", "registered_backbones", "vision_param_count"]
