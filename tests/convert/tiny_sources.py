"""Tiny random PyTorch / Hugging Face models for the conversion tests, and their reference outputs.

Weights are re-drawn at order-one scale (norm weights around one) so that every tensor visibly
matters; the vision towers see 16x16 images in 8x8 patches (a 2x2 token grid).
"""
import math

import numpy as np
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, \
    SiglipVisionModel

VIT = dict(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
           num_attention_heads=2)


def order_one(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(param[0].numel()))
            else:
                base = 1.0 if "norm" in name else 0.0
                param.copy_(base + 0.1 * torch.randn(param.shape, generator=gen))
    return model.eval()


def tiny_llama(seed=0, **overrides) -> LlamaForCausalLM:
    fields = dict(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    fields.update(overrides)
    return order_one(LlamaForCausalLM(LlamaConfig(**fields)), seed)


def tiny_vit(kind="clip", seed=1):
    model = CLIPVisionModel(CLIPVisionConfig(**VIT)) if kind == "clip" else SiglipVisionModel(SiglipVisionConfig(**VIT))
    return order_one(model, seed)


def vit_features(model, pixels, kind="clip"):
    """The hidden state LLaVA feeds its projector: the second-to-last layer, class token dropped (CLIP)."""
    with torch.no_grad():
        hidden = model(pixel_values=torch.tensor(pixels), output_hidden_states=True).hidden_states[-2]
    return hidden[:, 1:] if kind == "clip" else hidden


def llama_logits(model, ids, inputs_embeds=None):
    with torch.no_grad():
        if inputs_embeds is not None:
            return model(inputs_embeds=inputs_embeds).logits.numpy()
        return model(torch.tensor(np.asarray(ids), dtype=torch.long)).logits.numpy()


def pixels(seed=0, batch=1):
    return np.random.default_rng(seed).standard_normal((batch, 3, 16, 16)).astype(np.float32)
