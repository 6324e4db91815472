"""A PyTorch reference of the SigLIP tower the Eve release builds, written here from its facts (not its code).

For `vision_tower_type: siglip` the release calls DeepSeek-VL's `create_siglip_vit` (a timm
VisionTransformer) with `select_layer=-1` and no head: patch embedding (conv with bias), learned
position embedding `pos_embed` [1, N, C], no class token, pre-norm blocks with a fused `attn.qkv`
(rows q, k, v; heads split inside each), `attn.proj`, `mlp.fc1` -> nn.GELU (exact) -> `mlp.fc2`,
LayerNorm eps 1e-6 everywhere, then the final `norm`, every token out. The MAP head (`attn_pool`)
is built but never run; a few of its tensors are kept here so a state dict has them.
"""
import math

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width, heads, inner, act):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(width, 3 * width)
        self.attn.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(width, inner)
        self.mlp.fc2 = nn.Linear(inner, width)
        self.act = act

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(c // self.heads), -1) @ v
        x = x + self.attn.proj(attn.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp.fc2(self.act(self.mlp.fc1(self.norm2(x))))


class TimmSiglipTower(nn.Module):
    def __init__(self, image_size, patch_size, width, depth, heads, inner, act=None):
        super().__init__()
        act = act or nn.GELU()  # the release's timm blocks: exact GELU
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, width, patch_size, patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2, width))
        self.blocks = nn.ModuleList([Block(width, heads, inner, act) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.attn_pool = nn.Module()
        self.attn_pool.latent = nn.Parameter(torch.zeros(1, 1, width))
        self.attn_pool.kv = nn.Linear(width, 2 * width)

    def forward(self, pixels):
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
