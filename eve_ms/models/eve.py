"""Eve: a frozen vision encoder, a vision adapter and the LLM (with EVF layers in stage 3).

The data pipeline expands each `<image>` placeholder into exactly `config.num_image_tokens`
copies of IMAGE_TOKEN_INDEX, so sequence lengths are static. `splice_image_tokens` is the one
place where image features replace those positions and where the modality mask comes from;
every path (training, evaluation, generation) goes through it.

Weight names: `vision_tower.*`, `adapter.*`, `llm.*` (the LLM's own names are Hugging Face's).
"""
from __future__ import annotations

import mindspore as ms
from mindformers.tools.register import MindFormerModuleType, MindFormerRegister
from mindspore import nn, ops

from eve_ms.config import EveConfig
from eve_ms.models.adapter import build_adapter
from eve_ms.models.llm import LLM
from eve_ms.models.vision import build_vision_encoder


def modality_mask(input_ids, image_token_index: int):
    """is_image [B, S]: True at image-token positions."""
    return input_ids == image_token_index


def splice_image_tokens(text_embeds, image_features, is_image):
    """Put image_features [B, N, H] into text_embeds [B, S, H] at the positions where is_image [B, S].

    The k-th image position of sample b receives image_features[b, k]; samples without image
    positions are unchanged. The data pipeline guarantees 0 or exactly N image positions per sample.
    """
    num_image = image_features.shape[1]
    order = ops.clip(ops.cumsum(is_image.astype(ms.int32), 1) - 1, 0, num_image - 1)
    picked = ops.gather(image_features, order, 1, batch_dims=1)
    return ops.where(is_image.expand_dims(-1), picked.astype(text_embeds.dtype), text_embeds)


@MindFormerRegister.register(MindFormerModuleType.MODELS)
class EveForCausalLM(nn.Cell):
    """The whole model; `construct` is the training forward, `forward` returns logits too."""

    def __init__(self, config: EveConfig):
        super().__init__()
        self.config = config
        self.image_token_index = config.image_token_index
        self.vision_tower = build_vision_encoder(config.vision)
        self.adapter = build_adapter(config.adapter, config.vision.feature_dim, config.llm.hidden_size,
                                     config.vision.grid_size)
        self.llm = LLM(config.llm, evf_config=config.evf)
        self.aux_loss_alpha = config.evf.aux_loss_alpha if config.evf.enabled else 0.0

    def encode_images(self, pixel_values):
        """pixels [B, 3, S, S] -> image tokens in the LLM's width [B, num_image_tokens, H]."""
        return self.adapter(self.vision_tower(pixel_values))

    def embed_inputs(self, input_ids, pixel_values=None):
        """Token embeddings with image tokens spliced in, and the modality mask."""
        is_image = modality_mask(input_ids, self.image_token_index)
        text_ids = ops.where(is_image, ops.zeros_like(input_ids), input_ids)
        embeds = self.llm.embed(text_ids)
        if pixel_values is not None:
            embeds = splice_image_tokens(embeds, self.encode_images(pixel_values), is_image)
        return embeds, is_image

    def forward(self, input_ids, attention_mask=None, pixel_values=None, labels=None, routing_noise=None):
        """-> (logits, loss_sum, num_targets, aux_loss (unscaled), routing_stats [num_evf, NUM_ROUTING_STATS])."""
        embeds, is_image = self.embed_inputs(input_ids, pixel_values)
        return self.llm.forward_embeds(embeds, attention_mask, is_image, routing_noise, labels)

    def construct(self, input_ids, attention_mask, labels, pixel_values=None, routing_noise=None):
        """Training forward: (loss_sum, num_targets, alpha * aux_loss, routing_stats [num_evf, NUM_ROUTING_STATS])."""
        _, loss_sum, num_targets, aux_loss, routing_stats = self.forward(
            input_ids, attention_mask, pixel_values, labels, routing_noise
        )
        return loss_sum, num_targets, aux_loss * self.aux_loss_alpha, routing_stats

    def set_evf_mode(self, mode: str) -> None:
        self.llm.set_evf_mode(mode)


def eve_param_count(model: nn.Cell) -> int:
    """Parameters of an instantiated model (what `EveConfig.param_counts()['total']` predicts)."""
    return sum(int(p.size) for p in model.get_parameters() if "moving_" not in p.name)


# yaml `model.model_config.type: EveConfig` resolves through the same registry
MindFormerRegister.register(MindFormerModuleType.CONFIG)(EveConfig)
