"""Tiny Eve models for the inference tests: config, random order-one weights, a tokenizer corpus, pixels.

The EVF model (EVF layer 0, dense layer 1) routes with `gbpr` (no modality prior) and
capacity factor 2 (capacity = every token slot, so nothing is ever dropped): routing is then a
per-token function of the hidden state, text tokens reach the vision FFN too, and a sample's
outputs do not depend on what it is batched with. Its vision FFN differs from its language
FFN, so the two modes differ.
"""
import numpy as np
from mindspore import Tensor

from eve_ms.config import AdapterConfig, EveConfig, EVFConfig, LLMConfig, VisionConfig
from eve_ms.data.templates import VICUNA_V1_SYSTEM

CORPUS = [
    VICUNA_V1_SYSTEM + " USER: ASSISTANT:",
    "What is in the picture? A red apple on a wooden table next to a cup of tea.",
    "Describe the image in one sentence. The cat sleeps on the sofa near the window.",
    "How many birds are there? There are three birds sitting on the fence.",
    "The answer is yes. The answer is no. Hello, how are you today? I am fine, thank you.",
]


def tiny_config(vocab_size: int, evf: bool = True, **evf_overrides) -> EveConfig:
    evf_fields = dict(enabled=True, layers="alternate", strategy="gbpr", capacity_factor=2.0, min_capacity=1)
    evf_fields.update(evf_overrides)
    return EveConfig(
        vision=VisionConfig(backbone="siglip", image_size=16, patch_size=8, hidden_size=16, intermediate_size=32,
                            num_layers=2, num_heads=2),
        adapter=AdapterConfig(type="mlp2x_gelu"),
        llm=LLMConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, max_position_embeddings=160, rms_norm_eps=1e-5),
        evf=EVFConfig(**evf_fields) if evf else EVFConfig(enabled=False),
    )


def randomize(model, seed: int = 0) -> None:
    """Order-one weights so that every tensor visibly matters (norm weights around one)."""
    rng = np.random.default_rng(seed)
    for param in model.get_parameters():
        if "moving_" in param.name:
            continue
        if len(param.shape) >= 2:
            value = rng.standard_normal(param.shape) / np.sqrt(np.prod(param.shape[1:]))
        else:
            base = 1.0 if param.name.endswith(("norm.weight", "layernorm.weight", ".gamma")) else 0.0
            value = base + 0.1 * rng.standard_normal(param.shape)
        param.set_data(Tensor(value.astype(np.float32)))


def build_model(vocab_size: int, evf: bool = True, seed: int = 0, **evf_overrides):
    from eve_ms.models.eve import EveForCausalLM

    config = tiny_config(vocab_size, evf, **evf_overrides)
    model = EveForCausalLM(config)
    randomize(model, seed)
    model.set_train(False)
    return model


def image_pixels(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((3, size, size)).astype(np.float32)
