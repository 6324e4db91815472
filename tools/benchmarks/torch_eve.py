"""The same model and training step in PyTorch, for the eve-ms / PyTorch throughput ratio.

Architecture per preset, equal shapes and parameter counts to the eve-ms model:
- vision tower: Hugging Face `SiglipVisionModel` with the layers up to the selected one (frozen);
- adapter: the PyTorch LDP of tools/parity_cases.py (MobileVLM's module layout);
- LLM: Hugging Face `LlamaForCausalLM` (its default attention implementation, as a PyTorch user runs it);
- stage 2: LoRA (rank, alpha, dropout as eve-ms) on every nn.Linear of the LLM, lm_head included;
- stage 3: in alternate layers the MLP becomes `TorchEVF`: a linear router, the img_gbpr modality
  prior, top-1 routing with global batch-prioritised capacity (C = 1.5), expert buffers gathered
  by index, unit combine with the straight-through gate and the aux loss. Redistribution of the
  overflow is left out (its cost is an index sort of the overflow; the FFN work is the same).

The step: forward, loss (+ alpha x aux), backward, gradient clipping to 1.0, AdamW (betas 0.9/0.95),
the loss read back to the host (as the eve-ms trainer does to check it is finite).
"""
from __future__ import annotations

import copy
import math

from benchmarks.common import LEARNING_RATE, LORA, PRESETS, eve_config, shared, synthetic_batch


def _modules():
    """Module classes, defined lazily so that importing this file does not import torch."""
    import torch
    from torch import nn

    class Routing:
        """The modality and validity masks of the current batch, read by every EVF layer."""

        is_image = None
        valid = None

    class TorchEVF(nn.Module):
        def __init__(self, mlp, hidden, routing, capacity_factor=1.5, min_capacity=4, beta=1.0):
            super().__init__()
            self.language_ffn = mlp
            self.vision_ffn = copy.deepcopy(mlp)
            self.router = nn.Linear(hidden, 2, bias=False)
            nn.init.normal_(self.router.weight, 0.0, 0.02)
            self.routing, self.beta = routing, beta
            self.capacity_factor, self.min_capacity = capacity_factor, min_capacity
            self.aux_loss = None

        def forward(self, x):
            batch, seq, hidden = x.shape
            num = batch * seq
            cap = int(min(num, max(self.min_capacity, math.ceil(self.capacity_factor * num / 2))))
            tokens = x.reshape(num, hidden)
            probs = torch.softmax(self.router(tokens.float()), -1)
            image = self.routing.is_image.reshape(num)
            valid = self.routing.valid.reshape(num)
            prior = self.beta * torch.stack((~image, image), -1).float()
            scores = probs.detach() + prior
            preferred = (scores[:, 1] > scores[:, 0]).long()
            priority = scores.gather(1, preferred[:, None])[:, 0]
            # expert 0's tokens by priority, then expert 1's, padding last (priority < 1 + beta <= 4)
            key = torch.where(valid, preferred.float() * 8.0 - priority, torch.full_like(priority, 100.0))
            order = torch.argsort(key, stable=True)
            position = torch.empty_like(order)
            position[order] = torch.arange(num)
            rank = position - preferred * (valid & (preferred == 0)).sum()
            kept = valid & (rank < cap)
            flat = torch.where(kept, preferred * cap + rank, torch.full_like(rank, 2 * cap))
            table = torch.full((2 * cap + 1,), num, dtype=torch.long)
            table[flat[kept]] = torch.arange(num)[kept]
            padded = torch.cat((tokens, tokens.new_zeros(1, hidden)))
            language_out = self.language_ffn(padded[table[:cap]])
            vision_out = self.vision_ffn(padded[table[cap:2 * cap]])
            out = torch.cat((language_out, vision_out, language_out.new_zeros(1, hidden)))[flat]
            gate = probs.gather(1, preferred[:, None])
            out = out + out * (gate - gate.detach()).to(out.dtype)
            counts = torch.stack(((kept & (preferred == 0)).sum(), (kept & (preferred == 1)).sum())).float()
            denominator = valid.sum().clamp(min=1).float()
            mean_prob = (probs * valid[:, None].float()).sum(0) / denominator
            self.aux_loss = (counts / denominator * mean_prob).sum()
            return out.reshape(batch, seq, hidden)

    class LoRALinear(nn.Module):
        def __init__(self, base, rank, alpha, dropout):
            super().__init__()
            self.base = base
            self.lora_a = nn.Linear(base.in_features, rank, bias=False)
            self.lora_b = nn.Linear(rank, base.out_features, bias=False)
            nn.init.zeros_(self.lora_b.weight)
            self.dropout = nn.Dropout(dropout)
            self.scaling = alpha / rank

        def forward(self, x):
            return self.base(x) + self.lora_b(self.lora_a(self.dropout(x))) * self.scaling

    class TorchEve(nn.Module):
        def __init__(self, config, stage):
            super().__init__()
            from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

            from parity_cases import torch_adapter  # tools/ is on sys.path (tools/bench.py)

            v, lm = config.vision, config.llm
            self.vision = SiglipVisionModel(SiglipVisionConfig(
                hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.layers_used,
                num_attention_heads=v.num_heads, image_size=v.image_size, patch_size=v.patch_size)).vision_model
            self.adapter = torch_adapter("ldp", v.feature_dim, lm.hidden_size, v.grid_size,
                                         config.adapter.output_grid(v.grid_size))
            self.llm = LlamaForCausalLM(LlamaConfig(
                vocab_size=lm.vocab_size, hidden_size=lm.hidden_size, intermediate_size=lm.intermediate_size,
                num_hidden_layers=lm.num_layers, num_attention_heads=lm.num_heads,
                num_key_value_heads=lm.kv_heads, max_position_embeddings=lm.max_position_embeddings,
                rms_norm_eps=lm.rms_norm_eps, tie_word_embeddings=lm.tie_word_embeddings))
            self.image_token_index = config.image_token_index
            self.routing = Routing()
            self.evf_layers = []
            self.aux_alpha = config.evf.aux_loss_alpha
            for p in self.vision.parameters():
                p.requires_grad_(False)
            if stage == 1:
                for p in self.llm.parameters():
                    p.requires_grad_(False)
            elif stage == 2:
                for p in self.llm.parameters():
                    p.requires_grad_(False)
                self._add_lora(self.llm)
            else:
                for p in self.parameters():
                    p.requires_grad_(False)
                for i in config.evf.layer_indices(lm.num_layers):
                    layer = self.llm.model.layers[i]
                    layer.mlp = TorchEVF(layer.mlp, lm.hidden_size, self.routing)
                    for p in list(layer.mlp.vision_ffn.parameters()) + list(layer.mlp.router.parameters()):
                        p.requires_grad_(True)
                    self.evf_layers.append(layer.mlp)

        def _add_lora(self, module):
            for name, child in module.named_children():
                if isinstance(child, nn.Linear):
                    lora = LoRALinear(child, LORA["lora_rank"], LORA["lora_alpha"], LORA["lora_dropout"])
                    setattr(module, name, lora)
                else:
                    self._add_lora(child)

        def forward(self, input_ids, attention_mask, labels, pixel_values):
            is_image = input_ids == self.image_token_index
            with torch.no_grad():  # frozen in every stage
                features = self.vision.encoder(inputs_embeds=self.vision.embeddings(pixel_values)).last_hidden_state
            image_tokens = self.adapter(features)
            embeds = self.llm.get_input_embeddings()(torch.where(is_image, 0, input_ids))
            order = (torch.cumsum(is_image.long(), 1) - 1).clamp(0, image_tokens.shape[1] - 1)
            picked = torch.gather(image_tokens, 1, order[..., None].expand(-1, -1, embeds.shape[-1]))
            embeds = torch.where(is_image[..., None], picked.to(embeds.dtype), embeds)
            self.routing.is_image, self.routing.valid = is_image, attention_mask.bool()
            loss = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels).loss
            if self.evf_layers:
                loss = loss + self.aux_alpha * torch.stack([layer.aux_loss for layer in self.evf_layers]).sum()
            return loss

    return TorchEVF, LoRALinear, TorchEve


class TorchStep:
    """One PyTorch training step per call."""

    def __init__(self, preset: str, stage: int, seed: int = 0):
        import torch

        _, _, torch_eve = _modules()
        torch.manual_seed(seed)
        config = eve_config(preset, evf=stage == 3)
        spec = PRESETS[preset]
        batch = synthetic_batch(config, spec["batch_size"], spec["seq_len"], seed)
        self.model = torch_eve(config, stage).train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=LEARNING_RATE[stage], betas=(0.9, 0.95), eps=1e-8,
                                           weight_decay=0.0)
        self.inputs = [torch.as_tensor(batch[k]).long() if batch[k].dtype.kind == "i" else torch.as_tensor(batch[k])
                       for k in ("input_ids", "attention_mask", "labels", "pixel_values")]
        self.tokens = int(batch["input_ids"].size)
        self.samples = int(batch["input_ids"].shape[0])
        self.trainable = sum(p.numel() for p in self.params)

    def __call__(self):
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model(*self.inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        return float(loss.item())


def torch_step(preset: str, stage: int, seed: int = 0) -> TorchStep:
    """The run's PyTorch step for (preset, stage), built once."""
    return shared(("torch", preset, stage, seed), lambda: TorchStep(preset, stage, seed))
