"""Eve: a frozen vision encoder, a vision adapter and the LLM (with EVF layers in stage 3).

The data pipeline expands each `<image>` placeholder into exactly `config.num_image_tokens`
copies of IMAGE_TOKEN_INDEX, so sequence lengths are static. `splice_image_tokens` is the one
place where image features replace those positions and where the modality mask comes from;
every path (training, evaluation, generation) goes through it.

Weight names: `vision_tower.*`, `adapter.*`, `llm.*` (the LLM's own names are Hugging Face's).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from eve_ms.config import EveConfig
from eve_ms.mindformers_env import mindformers_registry
from eve_ms.models.adapter import build_adapter
from eve_ms.models.llm import LLM
from eve_ms.models.vision import build_vision_encoder
from eve_ms.ops.token_allocation import NUM_EXPERTS

MindFormerModuleType, MindFormerRegister = mindformers_registry()


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


def param_counts(config: EveConfig) -> dict:
    """Parameter counts computed from the config alone (no weights allocated), by the models' own formulas.

    `activated` counts what one token passes through: in an EVF layer a token uses one of the two
    FFNs, so one FFN per EVF layer is not activated. (`eve_ms.plan.inventory.param_counts` counts the
    same without MindSpore, for ViT backbones; tests/plan checks the two agree.)
    """
    from eve_ms.models.adapter import adapter_param_count
    from eve_ms.models.ffn import ffn_param_count
    from eve_ms.models.llm import llm_param_count
    from eve_ms.models.vision import vision_param_count

    llm_config = config.llm
    vision = vision_param_count(config.vision)
    adapter = adapter_param_count(config.adapter, config.vision.feature_dim, llm_config.hidden_size)
    llm = llm_param_count(llm_config)
    evf_layers = config.evf.layer_indices(llm_config.num_layers)
    router = NUM_EXPERTS * llm_config.hidden_size  # linear router, no bias
    vision_ffns = sum(ffn_param_count(llm_config, llm_config.ffn_kind(i)) for i in evf_layers)
    evf_extra = vision_ffns + len(evf_layers) * router
    total = vision + adapter + llm + evf_extra
    return {"vision": vision, "adapter": adapter, "llm": llm, "evf_extra": evf_extra, "total": total,
            "activated": total - vision_ffns}


def eve_param_count(model: nn.Cell) -> int:
    """Parameters of an instantiated model (what `param_counts(config)['total']` predicts)."""
    return sum(int(p.size) for p in model.get_parameters() if "moving_" not in p.name)


# yaml `model.model_config.type: EveConfig` resolves through the same registry
MindFormerRegister.register(MindFormerModuleType.CONFIG)(EveConfig)
