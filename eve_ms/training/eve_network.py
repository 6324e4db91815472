"""The Eve model as the trainer's network: its loss pieces plus one token success rate per EVF layer.

`EveTrainNetwork(model)` takes the batch keys `input_ids, attention_mask, labels, pixel_values`
(+ `routing_noise` when the model has EVF layers) and returns the trainer's contract
(eve_ms.training.trainer): `(loss_sum, num_targets, alpha * aux_loss, routing_counts)`, where
routing_counts is every EVF layer's `ROUTING_STAT_NAMES` counts, flattened [num_evf * NUM_ROUTING_STATS]
(shape [0] for a dense model). The trainer sums them over micro-batches and ranks and
`routing_record` turns the sums into the step record's `token_success_rate` {layer: (kept_language
+ kept_vision) / valid} (what the paper's Figure 3 plots) and `routing` {layer: {text|image: {valid,
kept_language, kept_vision, dropped, redistributed}}}: rates of summed counts, not means of rates.

An empty image batch (`pixel_values` of shape [0, ...], see `stage_data.StageLoader`) means a
text-only batch: the vision tower and adapter are not run. The test is on a static shape, so
graph mode decides it when it compiles the graph for that shape.

The wrapper adds no prefix to parameter names (auto_prefix=False): the weights it saves carry
the model's own names (vision_tower.*, adapter.*, llm.*).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

import numpy as np

from eve_ms.models.evf import NUM_ROUTING_STATS, ROUTING_STAT_NAMES

MODALITY_COUNTS = ("valid", "kept_language", "kept_vision", "dropped", "redistributed")

DENSE_INPUT_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values")
EVF_INPUT_KEYS = DENSE_INPUT_KEYS + ("routing_noise",)


class EveTrainNetwork(nn.Cell):
    """`EveForCausalLM` -> (loss_sum, num_targets, alpha * aux_loss, routing counts of every EVF layer)."""

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
        return loss_sum, num_targets, aux_loss, stats.reshape(-1)


def routing_record(counts, layer_names) -> dict:
    """Summed routing counts [len(layer_names) * NUM_ROUTING_STATS] -> the step record's routing entries."""
    rows = np.asarray(counts, np.float64).reshape(len(layer_names), NUM_ROUTING_STATS)
    success, routing = {}, {}
    for name, row in zip(layer_names, rows):
        named = dict(zip(ROUTING_STAT_NAMES, row))
        image = {k: int(round(named["image_" + k])) for k in MODALITY_COUNTS}
        text = {k: int(round(named[k])) - image[k] for k in MODALITY_COUNTS}
        success[name] = (named["kept_language"] + named["kept_vision"]) / max(named["valid"], 1.0)
        routing[name] = {"text": text, "image": image}
    return {"token_success_rate": success, "routing": routing}
