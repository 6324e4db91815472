"""The static KV cache of generation, held in Parameters and written in place, and the step cells kept by shape.

A decode step used to take the caches as inputs ([L, B, n_kv, M, D] each) and return new ones: the
graph unstacked them into layers, rebuilt each layer's cache by a gather and a select to write one
slot, stacked them again and handed them back, three to four copies of the whole cache per step,
a fifth of the step's kernel time (tools/benchmarks/profile_decode.py). Here each layer's keys and
values are a Parameter [B, n_kv, M, D] of a `KVCache`; `Attention` writes a step's slots with a
ScatterNdUpdate into them (in place, only the new slots move) and nothing is returned but the
next tokens and the last position's logits. The greedy choice (argmax, ties to the lowest id, as
numpy's) is made in the graph, so a greedy loop reads back B ids per step.

A `KVCache` has one shape (batch, slots); a step cell over it (`eve_ms.inference.generate`'s
PrefillStep and DecodeStep) compiles one graph per input shape (the prefill's prompt length, and 1
for decoding). `CacheCells` keeps a few of them, by shape,
so that repeated generations of one shape reuse their compiled graphs.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

__all__ = ["KVCache", "CacheCells", "greedy_token"]


def greedy_token(last_logits):
    """[B, V] -> [B] int32 argmax (the first of equal maxima, as numpy's argmax)."""
    return ops.argmax(last_logits, -1).astype(ms.int32)


class KVCache(nn.Cell):
    """Per-layer key and value caches [batch, num_kv_heads, slots, head_dim], zeros at first."""

    def __init__(self, config, batch_size: int, slots: int, dtype=ms.float32):
        super().__init__(auto_prefix=False)
        if slots > config.max_position_embeddings:
            raise ValueError(f"cache length {slots} exceeds max_position_embeddings={config.max_position_embeddings}")
        self.batch_size, self.slots = batch_size, slots
        self.shape = (batch_size, config.kv_heads, slots, config.dim_per_head)
        self.dtype = dtype

        def layers(kind):
            return ParameterTuple(
                Parameter(Tensor(np.zeros(self.shape, ms.dtype_to_nptype(dtype))), name=f"kv_cache.{kind}.{i}",
                          requires_grad=False)
                for i in range(config.num_layers)
            )

        self.keys, self.values = layers("key"), layers("value")

    def reset(self) -> None:
        """Zero every slot: what a fresh cache holds (masked slots are never read, but 0 * inf would be NaN)."""
        zeros = np.zeros(self.shape, ms.dtype_to_nptype(self.dtype))
        for param in (*self.keys, *self.values):
            param.set_data(Tensor(zeros))

    def nbytes(self) -> int:
        return 2 * len(self.keys) * int(np.prod(self.shape)) * np.dtype(ms.dtype_to_nptype(self.dtype)).itemsize


class CacheCells:
    """Step cells by (batch, slots, key): each shape's `KVCache` and the cells that write it, most recent kept.

    `make(cache, key)` builds a cell over a cache. At most `max_shapes` caches stay alive (least
    recently used dropped first, with their cells and compiled graphs): a cache is the model's
    whole context for a batch, too big to keep for every shape a long evaluation meets.
    """

    def __init__(self, config, dtype, make: Callable, max_shapes: int = 4):
        self.config, self.dtype, self.make = config, dtype, make
        self.max_shapes = max_shapes
        self._shapes: OrderedDict = OrderedDict()  # (batch, slots) -> (KVCache, {key: cell})

    def get(self, batch: int, slots: int, key=None):
        """(cell, cache) for this shape and key; the cache is not reset here."""
        shape = (batch, slots)
        if shape not in self._shapes:
            while len(self._shapes) >= self.max_shapes:
                self._shapes.popitem(last=False)
            self._shapes[shape] = (KVCache(self.config, batch, slots, self.dtype), {})
        self._shapes.move_to_end(shape)
        cache, cells = self._shapes[shape]
        if key not in cells:
            cells[key] = self.make(cache, key)
        return cells[key], cache
