"""Vision Transformers for SigLIP and CLIP: one implementation, the families differ by three flags.

Semantics and weight names follow Hugging Face's `SiglipVisionModel` / `CLIPVisionModel`
below their `vision_model.` prefix, so conversion is a rename table (see
`eve_ms.convert.hf_vision`). The output is the hidden state `config.select_layer`
(Hugging Face `hidden_states` indexing); layers after it are not built. Selecting the
last layer gives the model's `last_hidden_state`: SigLIP applies its post-layernorm there
(as transformers >= 4.5x also does for `hidden_states[-1]`), CLIP does not (its
post-layernorm only normalises the pooled class token). SigLIP's pooling head is never built.

| flag | SigLIP | CLIP |
|---|---|---|
| `patch_bias` (patch conv bias) | yes | no |
| `class_token` (prepended, then dropped from the output) | no | yes |
| `uses_pre_layernorm` (LayerNorm on the embeddings, HF `pre_layrnorm`) | no | yes |
| `uses_post_layernorm` (LayerNorm after the last layer, built only when it is selected) | yes | no |
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from eve_ms.config import VisionConfig
from eve_ms.mindformers_env import mindformers_registry
from eve_ms.models.vision.base import VisionEncoder, activation

MindFormerModuleType, MindFormerRegister = mindformers_registry()


class Attention(nn.Cell):
    """Multi-head self-attention over all tokens (no mask), q/k/v/out projections with bias."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        width, heads = config.hidden_size, config.num_heads
        if width % heads:
            raise ValueError(f"vision hidden_size {width} is not divisible by num_heads {heads}")
        self.num_heads = heads
        self.head_dim = width // heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Dense(width, width)
        self.k_proj = nn.Dense(width, width)
        self.v_proj = nn.Dense(width, width)
        self.out_proj = nn.Dense(width, width)

    def construct(self, x):
        batch, tokens, width = x.shape
        split = (batch, tokens, self.num_heads, self.head_dim)
        q = self.q_proj(x).reshape(split).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(split).transpose(0, 2, 3, 1)
        v = self.v_proj(x).reshape(split).transpose(0, 2, 1, 3)
        # softmax in float32 whatever the weights' dtype, as Hugging Face does
        scores = ops.matmul(q, k).astype(ms.float32) * self.scale
        probs = ops.softmax(scores, axis=-1).astype(v.dtype)
        out = ops.matmul(probs, v).transpose(0, 2, 1, 3).reshape(batch, tokens, width)
        return self.out_proj(out)


class MLP(nn.Cell):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.fc1 = nn.Dense(config.hidden_size, config.intermediate_size)
        self.activation_fn = activation(config.hidden_act)
        self.fc2 = nn.Dense(config.intermediate_size, config.hidden_size)

    def construct(self, x):
        return self.fc2(self.activation_fn(self.fc1(x)))


class EncoderLayer(nn.Cell):
    """Pre-LN transformer layer: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.layer_norm1 = nn.LayerNorm((width,), epsilon=eps)
        self.self_attn = Attention(config)
        self.layer_norm2 = nn.LayerNorm((width,), epsilon=eps)
        self.mlp = MLP(config)

    def construct(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Cell):
    def __init__(self, config: VisionConfig, num_layers: int):
        super().__init__()
        self.layers = nn.CellList([EncoderLayer(config) for _ in range(num_layers)])

    def construct(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Embeddings(nn.Cell):
    """Patch embedding, optional class token, learned absolute position embeddings.

    The patch embedding's weights live in an nn.Conv2d (Hugging Face's layout and names), but it is
    computed as one GEMM over the flattened patches: with stride = kernel the convolution is exactly
    that product, and MindSpore's CPU Conv2D runs it 40-200x slower than the GEMM (a 384-pixel
    SigLIP-L image: seconds instead of milliseconds).
    """

    def __init__(self, config: VisionConfig, patch_bias: bool, class_token: bool):
        super().__init__()
        width = config.hidden_size
        self.class_token = class_token
        self.patch_bias = patch_bias
        self.patch_size = config.patch_size
        self.grid_size = config.grid_size
        self.crop = config.image_size != config.grid_size * config.patch_size  # 'valid' drops the remainder
        if class_token:
            self.class_embedding = ms.Parameter(ops.zeros(width, ms.float32), name="class_embedding")
        self.patch_embedding = nn.Conv2d(
            config.num_channels, width, kernel_size=config.patch_size, stride=config.patch_size,
            pad_mode="valid", has_bias=patch_bias,
        )
        self.project = ops.MatMul(transpose_b=True)
        self.position_embedding = nn.Embedding(config.num_tokens + int(class_token), width)

    def construct(self, pixels):
        weight = self.patch_embedding.weight  # [width, channels, patch, patch]
        width, channels = weight.shape[0], weight.shape[1]
        batch, grid, patch = pixels.shape[0], self.grid_size, self.patch_size
        pixels = pixels.astype(weight.dtype)
        if self.crop:
            pixels = pixels[:, :, :grid * patch, :grid * patch]
        patches = pixels.reshape(batch, channels, grid, patch, grid, patch).transpose(0, 2, 4, 1, 3, 5)
        # the weight cast too: under graph-mode mixed precision it is read in the compute dtype while
        # weight.dtype (the pixels' dtype here) still says float32, as PyNative computes it
        x = self.project(patches.reshape(batch * grid * grid, channels * patch * patch),
                         weight.reshape(width, -1).astype(pixels.dtype))
        if self.patch_bias:
            x = x + self.patch_embedding.bias
        x = x.reshape(batch, grid * grid, width)
        if self.class_token:
            cls = ops.broadcast_to(self.class_embedding.reshape(1, 1, width), (batch, 1, width))
            x = ops.cat((cls.astype(x.dtype), x), axis=1)
        return x + self.position_embedding.embedding_table


class VisionTransformer(VisionEncoder):
    """pixels [B, 3, S, S] -> hidden state `select_layer` [B, (S/patch)^2, hidden_size], class token dropped."""

    patch_bias = True
    class_token = False
    uses_pre_layernorm = False
    uses_post_layernorm = False

    def __init__(self, config: VisionConfig):
        super().__init__(config)
        width, eps = config.hidden_size, config.layer_norm_eps
        self.embeddings = Embeddings(config, self.patch_bias, self.class_token)
        if self.uses_pre_layernorm:
            self.pre_layrnorm = nn.LayerNorm((width,), epsilon=eps)
        self.encoder = Encoder(config, config.layers_used)
        self.final_norm = self._has_final_norm(config)
        if self.final_norm:
            self.post_layernorm = nn.LayerNorm((width,), epsilon=eps)
        self.freeze()

    @classmethod
    def _has_final_norm(cls, config: VisionConfig) -> bool:
        return cls.uses_post_layernorm and config.layers_used == config.backbone_depth

    def encode(self, pixels):
        self.check_pixels(pixels)
        x = self.embeddings(pixels)
        if self.uses_pre_layernorm:
            x = self.pre_layrnorm(x)
        x = self.encoder(x)
        if self.final_norm:
            x = self.post_layernorm(x)
        if self.class_token:
            x = x[:, 1:, :]
        return x

    @classmethod
    def param_count(cls, config: VisionConfig) -> int:
        width, inner, tokens = config.hidden_size, config.intermediate_size, config.num_tokens
        embeddings = config.num_channels * width * config.patch_size**2 + (tokens + cls.class_token) * width
        embeddings += width * (cls.patch_bias + cls.class_token)
        norm = 2 * width
        layer = 4 * (width * width + width) + 2 * norm + 2 * width * inner + inner + width
        norms = norm * (cls.uses_pre_layernorm + cls._has_final_norm(config))
        return embeddings + norms + layer * config.layers_used


@MindFormerRegister.register(MindFormerModuleType.ENCODER, alias="siglip")
class SiglipVisionEncoder(VisionTransformer):
    """SigLIP's ViT (HF `SiglipVisionModel`)."""

    patch_bias = True
    class_token = False
    uses_pre_layernorm = False
    uses_post_layernorm = True


@MindFormerRegister.register(MindFormerModuleType.ENCODER, alias="clip")
class CLIPVisionEncoder(VisionTransformer):
    """OpenAI CLIP's ViT (HF `CLIPVisionModel`); the class token is dropped from the output tokens."""

    patch_bias = False
    class_token = True
    uses_pre_layernorm = True
    uses_post_layernorm = False
