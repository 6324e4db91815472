"""The Eve model as the trainer's network: its loss pieces plus one token success rate per EVF layer.

`EveTrainNetwork(model)` takes the batch keys `input_ids, attention_mask, labels, pixel_values`
(+ `routing_noise` when the model has EVF layers) and returns the trainer's contract
(eve_ms.training.trainer): `(loss_sum, num_targets, alpha * aux_loss, success_rates)`, where
success_rates[i] = (kept_language + kept_vision) / valid of the i-th EVF layer (what the
paper's Figure 3 plots), shape [0] for a dense model.

An empty image batch (`pixel_values` of shape [0, ...], see `stage_data.StageLoader`) means a
text-only batch: the vision tower and adapter are not run. The test is on a static shape, so
graph mode decides it when it compiles the graph for that shape.

The wrapper adds no prefix to parameter names (auto_prefix=False): the weights it saves carry
the model's own names (vision_tower.*, adapter.*, llm.*).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from eve_ms.models.evf import ROUTING_STAT_NAMES

_VALID = ROUTING_STAT_NAMES.index("valid")
_KEPT = (ROUTING_STAT_NAMES.index("kept_language"), ROUTING_STAT_NAMES.index("kept_vision"))

DENSE_INPUT_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values")
EVF_INPUT_KEYS = DENSE_INPUT_KEYS + ("routing_noise",)


class EveTrainNetwork(nn.Cell):
    """`EveForCausalLM` -> (loss_sum, num_targets, alpha * aux_loss, token success rate per EVF layer)."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model
        self.num_evf_layers = model.llm.num_evf_layers

    @property
    def input_keys(self) -> tuple:
        return EVF_INPUT_KEYS if self.num_evf_layers else DENSE_INPUT_KEYS

    def construct(self, input_ids, attention_mask, labels, pixel_values, routing_noise=None):
        images = pixel_values if pixel_values.shape[0] else None
        loss_sum, num_targets, aux_loss, stats = self.model(input_ids, attention_mask, labels, images, routing_noise)
        if not self.num_evf_layers:
            return loss_sum, num_targets, aux_loss, ops.zeros((0,), ms.float32)
        kept = stats[:, _KEPT[0]] + stats[:, _KEPT[1]]
        rates = kept / ops.maximum(stats[:, _VALID], 1.0)
        return loss_sum, num_targets, aux_loss, rates
