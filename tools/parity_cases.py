"""Model-cell parity cases for `tools/parity.py`: eve-ms cells against PyTorch / Hugging Face after conversion.

Each case builds a tiny random reference in process (a `transformers` model saved with
`save_pretrained` to a temporary directory, or a PyTorch module written below), converts
its weights with the package's own loaders (`load_hf_llm`, `load_hf_vision`, the adapters'
`reference_name` table), runs both on the same inputs and reports the largest absolute
difference against a float32 tolerance of 1e-4. The cells run in whatever device target
and execution mode the harness has set.

| case | eve-ms cell | reference |
|---|---|---|
| llama/gqa-untied | LLM, 4 query / 2 kv heads, separate lm_head, left padding | transformers LlamaForCausalLM |
| llama/tied-mha-bias | LLM, tied embeddings, q/k/v/o and MLP biases | transformers LlamaForCausalLM |
| llama/kv-cache-decode | LLMDecodeStep: prefill, then one-token steps on the static cache | the same model's full forward |
| vision/siglip, vision/clip | ViT, second-to-last layer (CLIP: 36-pixel images, 8-pixel patches) | hidden_states[-2] (CLIP: class token dropped) |
| vision/resnet | ResNet, last stage as tokens | hidden_states[-1] |
| adapter/ldp, adapter/ldpv2, adapter/mlp2x_gelu | the adapters | PyTorch modules written here, MobileVLM / LLaVA names |
| evf/language-only | EVF layer, mode language_only | transformers LlamaMLP |
| evf/multimodal-no-drop | EVF layer, img_gbpr, capacity for every token, both FFNs copies | transformers LlamaMLP |

torch and transformers are imported inside the cases only: importing this module costs
nothing, and a machine without them gets SKIP rows (each case lists its `requires`).
With device_target GPU the PyTorch references run on CUDA (TF32 off, so float32 means float32)
while the eve-ms cells run on MindSpore's CPU backend: MindSpore 2.9 has no GPU backend.
`ModelParityCase.tamper`, when set, is applied to the converted eve-ms cell before it runs;
the tests use it to check that a corrupted weight makes a case fail.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import tempfile
from typing import Callable, Optional

import numpy as np

FP32_TOLERANCE = 1e-4
REQUIRES = ("torch", "transformers")
_TORCH_DEVICE = contextvars.ContextVar("eve_ms_parity_torch_device", default="cpu")


def reference_device(device_target: str) -> str:
    """Where the PyTorch references run for a harness device target: cuda for GPU, else cpu."""
    return "cuda" if device_target.upper() == "GPU" else "cpu"


@contextlib.contextmanager
def _references_on(device: str):
    """Run the PyTorch references of the enclosed cases on `device`; on CUDA with TF32 disabled."""
    token = _TORCH_DEVICE.set(device)
    saved = None
    if device == "cuda":
        import torch

        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        _TORCH_DEVICE.reset(token)
        if saved is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _device():
    import torch

    return torch.device(_TORCH_DEVICE.get())


@dataclasses.dataclass(frozen=True)
class ModelParityCase:
    """A parity case as the harness expects it: `name`, `requires`, `run(device_target)`.

    `compare(tamper)` builds both sides and returns (what, eve_ms output, reference output)
    triples of numpy arrays; `run` turns each into a (backend, max_error, tolerance, detail) row.
    """

    name: str
    compare: Callable
    reference: str
    requires: tuple = REQUIRES
    tolerance: float = FP32_TOLERANCE
    tamper: Optional[Callable] = None  # called on the converted eve-ms cell before it runs

    def run(self, device_target: str):
        rows = []
        device = reference_device(device_target)
        with _references_on(device):
            triples = self.compare(self.tamper)
        where = "" if device == "cpu" else f" on {device}"
        for what, got, expected in triples:
            got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
            if got.shape != expected.shape:
                rows.append(("mindspore", float("inf"), self.tolerance,
                             f"{what}: shape {got.shape} != reference {expected.shape}"))
                continue
            error = float(np.abs(got - expected).max(initial=0.0))
            if not np.isfinite(got).all():
                error = float("nan")
            rows.append(("mindspore", error, self.tolerance, f"{what} {list(got.shape)} vs {self.reference}{where}"))
        return rows


def _apply(tamper, cell):
    if tamper is not None:
        tamper(cell)
    return cell


def _order_one_weights(model, seed: int):
    """Re-draw a torch model's weights at order-one scale, so every tensor visibly moves the output."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                fan_in = int(np.prod(param.shape[1:]))
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(fan_in))
            else:
                centre = 1.0 if name.endswith("norm.weight") else 0.0
                param.copy_(centre + 0.1 * torch.randn(param.shape, generator=gen))
    return model


# --------------------------------------------------------------------------- Llama

LLAMA = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
             pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _hf_llama(directory: str, seed: int, **overrides):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = _order_one_weights(LlamaForCausalLM(LlamaConfig(**{**LLAMA, **overrides})).eval(), seed)
    model.save_pretrained(directory, safe_serialization=True)
    return model


def _padded_batch(seed: int, batch: int = 2, length: int = 24, pad: int = 5):
    """Token ids and a mask whose second sample is left-padded (positions follow the mask)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, LLAMA["vocab_size"], (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[1, :pad], mask[1, :pad] = 0, 0
    return ids, mask, np.clip(np.cumsum(mask, 1) - 1, 0, None)


def _hf_logits(model, ids, mask, positions):
    import torch

    device = _device()
    with torch.no_grad():
        return model.to(device)(input_ids=torch.as_tensor(ids, dtype=torch.long, device=device),
                                attention_mask=torch.as_tensor(mask, device=device),
                                position_ids=torch.as_tensor(positions, dtype=torch.long, device=device)
                                ).logits.cpu().numpy()


def _llama_logits(**overrides):
    def compare(tamper):
        from mindspore import Tensor

        from eve_ms.convert import load_hf_llm

        with tempfile.TemporaryDirectory() as directory:
            hf = _hf_llama(directory, seed=0, **overrides)
            llm = _apply(tamper, load_hf_llm(directory))
        ids, mask, positions = _padded_batch(seed=1)
        logits = llm(Tensor(ids), Tensor(mask)).asnumpy()
        real = mask.astype(bool)  # outputs at padding positions are arbitrary in both
        return [("logits", logits[real], _hf_logits(hf, ids, mask, positions)[real])]

    return compare


def _llama_kv_cache(tamper):
    """Prefill 10 tokens, then decode one token at a time (LLMDecodeStep, one graph per length) vs the full forward."""
    import mindspore as ms
    from mindspore import Tensor

    from eve_ms.convert import load_hf_llm
    from eve_ms.models.llm import LLMDecodeStep

    with tempfile.TemporaryDirectory() as directory:
        hf = _hf_llama(directory, seed=2, num_key_value_heads=1)
        llm = _apply(tamper, load_hf_llm(directory))
    ids, mask, positions = _padded_batch(seed=3, length=16)
    prompt, slots = 10, 20
    keys, values = llm.init_cache(ids.shape[0], slots)
    cache_mask = np.zeros((ids.shape[0], slots), np.int32)
    cache_mask[:, :prompt] = mask[:, :prompt]
    step = LLMDecodeStep(llm)
    logits, keys, values = step(Tensor(ids[:, :prompt]), Tensor(cache_mask), Tensor(0, ms.int32), keys, values)
    steps = [logits.asnumpy()]
    for t in range(prompt, ids.shape[1]):
        cache_mask[:, t] = 1
        logits, keys, values = step(Tensor(ids[:, t:t + 1]), Tensor(cache_mask), Tensor(t, ms.int32), keys, values)
        steps.append(logits.asnumpy())
    real = mask.astype(bool)
    expected = _hf_logits(hf, ids, mask, positions)
    return [("cached logits", np.concatenate(steps, 1)[real], expected[real])]


# --------------------------------------------------------------------------- vision encoders

VIT = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, image_size=32,
           patch_size=8)
RESNET = dict(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 2])
RESNET_IMAGE_SIZE = 36
CLIP_IMAGE_SIZE = 36  # not a multiple of the patch: the patch embedding drops the remainder, as a 'valid' conv


def randomise_batchnorm(model, seed: int):
    """Non-trivial running statistics and affine weights, so that using them shows in the output."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model


def _hf_vision_model(backbone: str, seed: int):
    import torch
    from transformers import (CLIPVisionConfig, CLIPVisionModel, ResNetConfig, ResNetModel, SiglipVisionConfig,
                              SiglipVisionModel)

    torch.manual_seed(seed)
    if backbone == "siglip":
        return SiglipVisionModel(SiglipVisionConfig(**VIT)).eval()
    if backbone == "clip":
        return CLIPVisionModel(CLIPVisionConfig(**{**VIT, "image_size": CLIP_IMAGE_SIZE})).eval()
    return randomise_batchnorm(ResNetModel(ResNetConfig(**RESNET)), seed).eval()


def _vision(backbone: str, select_layer: int):
    def compare(tamper):
        import mindspore as ms
        import torch

        from eve_ms.convert import load_hf_vision
        from eve_ms.mindformers_env import import_mindformers

        import_mindformers()  # the encoders' registry: keep MindFormers' logs out of the working directory
        size = {"resnet": RESNET_IMAGE_SIZE, "clip": CLIP_IMAGE_SIZE}.get(backbone, VIT["image_size"])
        model = _hf_vision_model(backbone, seed=0)
        with tempfile.TemporaryDirectory() as directory:
            model.save_pretrained(directory)
            encoder = _apply(tamper, load_hf_vision(directory, select_layer=select_layer, image_size=size))
        pixels = np.random.default_rng(4).standard_normal((2, 3, size, size)).astype(np.float32)
        with torch.no_grad():
            state = model.to(_device())(pixel_values=torch.from_numpy(pixels).to(_device()), output_hidden_states=True)
        expected = state.hidden_states[select_layer].cpu().numpy()
        if expected.ndim == 4:  # resnet map [B, C, h, w] -> row-major tokens [B, h*w, C]
            expected = expected.reshape(expected.shape[0], expected.shape[1], -1).transpose(0, 2, 1)
        elif backbone == "clip":
            expected = expected[:, 1:]  # the encoder drops the class token
        return [(f"hidden_states[{select_layer}]", encoder(ms.Tensor(pixels)).asnumpy(), expected)]

    return compare


# --------------------------------------------------------------------------- adapters (PyTorch references)


def torch_adapter(adapter_type: str, in_dim: int, out_dim: int, grid: int, out_grid: int):
    """A PyTorch adapter written from the architecture description (DESIGN section 1), with the module
    paths of MobileVLM's / LLaVA's `mm_projector`: LDP, LDPv2 or LLaVA-1.5's MLP2x-GELU."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def to_grid(x, side):
        return x.permute(0, 2, 1).reshape(x.shape[0], x.shape[2], side, side)

    class ChannelLayerNorm(nn.LayerNorm):
        def forward(self, x):
            return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                                self.eps).permute(0, 3, 1, 2)

    class SqueezeExcite(nn.Module):
        def __init__(self, channels):
            super().__init__()
            squeezed = max(8, (channels // 4 + 4) // 8 * 8)  # torchvision's _make_divisible(c // 4, 8)
            if squeezed < 0.9 * (channels // 4):
                squeezed += 8
            self.fc1 = nn.Conv2d(channels, squeezed, 1)
            self.fc2 = nn.Conv2d(squeezed, channels, 1)

        def forward(self, x):
            return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))

    class InvertedResidual(nn.Module):
        """MobileNetV3 block, expansion 1: depthwise 3x3 + LN + hard-swish, SE, 1x1 + LN (+ input at stride 1)."""

        def __init__(self, channels, stride):
            super().__init__()
            self.block = nn.Sequential(
                nn.Sequential(nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
                              ChannelLayerNorm(channels, eps=1e-5), nn.Hardswish()),
                SqueezeExcite(channels),
                nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), ChannelLayerNorm(channels, eps=1e-5)),
            )
            self.residual = stride == 1

        def forward(self, x):
            y = self.block(x)
            return y + x if self.residual else y

    class LDP(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Module()
            self.model.mlp = nn.Sequential(nn.Identity(), nn.Linear(in_dim, out_dim), nn.GELU(),
                                           nn.Linear(out_dim, out_dim))
            self.model.mb_block = nn.Sequential(nn.Identity(), InvertedResidual(out_dim, 1),
                                                InvertedResidual(out_dim, 2))

        def forward(self, x):
            return self.model.mb_block(to_grid(self.model.mlp(x), grid)).flatten(2).permute(0, 2, 1)

    class LDPv2(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Module()
            self.mlp.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
            self.peg = nn.Module()
            self.peg.peg = nn.Sequential(nn.Conv2d(out_dim, out_dim, 3, 1, 1, bias=True, groups=out_dim))

        def forward(self, x):
            pooled = F.adaptive_avg_pool2d(to_grid(self.mlp.mlp(x), grid), out_grid)
            return (self.peg.peg(pooled) + pooled).flatten(2).transpose(1, 2)

    if adapter_type == "ldp":
        return LDP()
    if adapter_type == "ldpv2":
        return LDPv2()
    if adapter_type == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ValueError(f"no PyTorch reference for adapter type {adapter_type!r}")


def _adapter(adapter_type: str, grid: int):
    def compare(tamper):
        import mindspore as ms
        import torch

        from eve_ms.config import AdapterConfig
        from eve_ms.models.adapter import build_adapter, reference_name

        in_dim, out_dim = 16, 32
        config = AdapterConfig(type=adapter_type)
        ours = build_adapter(config, in_dim, out_dim, grid)
        torch.manual_seed(0)
        ref = _order_one_weights(torch_adapter(adapter_type, in_dim, out_dim, grid, config.output_grid(grid)), 5)
        state = ref.eval().state_dict()
        for name, param in ours.parameters_and_names():
            value = state[reference_name(adapter_type, name)].numpy()
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{name}: reference shape {value.shape} != cell shape {tuple(param.shape)}")
            param.set_data(ms.Tensor(value))
        _apply(tamper, ours)
        x = np.random.default_rng(6).standard_normal((2, grid * grid, in_dim)).astype(np.float32)
        with torch.no_grad():
            expected = ref.to(_device())(torch.from_numpy(x).to(_device())).cpu().numpy()
        return [("image tokens", ours(ms.Tensor(x)).asnumpy(), expected)]

    return compare


# --------------------------------------------------------------------------- EVF layer


def _evf(mode: str):
    """The EVF layer against Hugging Face's LlamaMLP holding the same weights.

    language_only runs the language FFN on every token; multimodal (img_gbpr, capacity
    factor 2 so that every token keeps its place, both FFNs copies of the MLP) routes the
    tokens through the allocation, dispatch and combine, and must still give the MLP's output.
    """

    def compare(tamper):
        import mindspore as ms
        import torch
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaMLP

        from eve_ms.config import EVFConfig, LLMConfig
        from eve_ms.models.evf import EVFLayer

        hidden, inner = 32, 48
        torch.manual_seed(0)
        mlp = _order_one_weights(LlamaMLP(LlamaConfig(hidden_size=hidden, intermediate_size=inner)).eval(), 7)
        layer = EVFLayer(LLMConfig(vocab_size=8, hidden_size=hidden, intermediate_size=inner, num_layers=1,
                                   num_heads=4),
                         EVFConfig(enabled=True, mode=mode, capacity_factor=2.0))
        for ffn in (layer.language_ffn, layer.vision_ffn):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                getattr(ffn, proj).weight.set_data(ms.Tensor(getattr(mlp, proj).weight.detach().numpy().copy()))
        layer.router.weight.set_data(ms.Tensor(np.random.default_rng(8).normal(0, 0.5, (2, hidden)), ms.float32))
        _apply(tamper, layer)
        rng = np.random.default_rng(9)
        x = rng.standard_normal((2, 12, hidden)).astype(np.float32)
        is_image = rng.random((2, 12)) < 0.5
        valid = np.ones((2, 12), bool)
        noise = rng.random((2, 12)).astype(np.float32)
        y, _, _ = layer(ms.Tensor(x), ms.Tensor(is_image), ms.Tensor(valid), ms.Tensor(noise))
        with torch.no_grad():
            expected = mlp.to(_device())(torch.from_numpy(x).to(_device())).cpu().numpy()
        return [(f"{mode} output", y.asnumpy(), expected)]

    return compare


# --------------------------------------------------------------------------- registry


def parity_cases() -> list[ModelParityCase]:
    """Every model-cell case, in the order the harness lists them."""
    hf_llama = "transformers LlamaForCausalLM"
    return [
        ModelParityCase("llama/gqa-untied", _llama_logits(), hf_llama),
        ModelParityCase("llama/tied-mha-bias", _llama_logits(num_key_value_heads=4, tie_word_embeddings=True,
                                                             attention_bias=True, mlp_bias=True), hf_llama),
        ModelParityCase("llama/kv-cache-decode", _llama_kv_cache, hf_llama + " full forward"),
        ModelParityCase("vision/siglip", _vision("siglip", -2), "transformers SiglipVisionModel"),
        ModelParityCase("vision/clip", _vision("clip", -2), "transformers CLIPVisionModel"),
        ModelParityCase("vision/resnet", _vision("resnet", -1), "transformers ResNetModel"),
        ModelParityCase("adapter/ldp", _adapter("ldp", 6), "PyTorch LDP", requires=("torch",)),
        ModelParityCase("adapter/ldpv2", _adapter("ldpv2", 7), "PyTorch LDPv2", requires=("torch",)),
        ModelParityCase("adapter/mlp2x_gelu", _adapter("mlp2x_gelu", 4), "PyTorch MLP2x-GELU", requires=("torch",)),
        ModelParityCase("evf/language-only", _evf("language_only"), "transformers LlamaMLP"),
        ModelParityCase("evf/multimodal-no-drop", _evf("multimodal"), "transformers LlamaMLP"),
    ]
