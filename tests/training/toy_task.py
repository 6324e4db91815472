"""Test support: a tiny LM-like task that goes through the real training path (yaml `task: <this file>:build`).

Network: per-position features -> `adapter` (nn.Dense) -> `llm` (two residual nn.Dense
blocks and an nn.Dense head) -> cross-entropy on labels, some of which are IGNORE_INDEX so
samples have different target counts. It returns the trainer's contract
(loss_sum, num_targets, aux_loss, routing_stats) with a small activation penalty as aux loss
and two sigmoid averages standing in for EVF token success rates.

`task_options` (all optional): num_samples, seq_len, features, hidden, vocab, trainable
("adapter" | "lora" | "all"), nan_at_step (features of that step's batches become NaN),
sleep_s (per micro-batch, to make a run slow enough to kill), dump_grads_dir (every rank
writes the reduced gradients of each step there).
"""
from __future__ import annotations

import os
import time

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from eve_ms.config import IGNORE_INDEX
from eve_ms.training.checkpoint import load_weights
from eve_ms.training.lora import apply_lora
from eve_ms.training.trainable import LORA_PARAM_GLOB, freeze_all_but
from eve_ms.training.trainer import TrainTask


class Block(nn.Cell):
    def __init__(self, hidden):
        super().__init__()
        self.up = nn.Dense(hidden, 2 * hidden)
        self.down = nn.Dense(2 * hidden, hidden, has_bias=False)

    def construct(self, h):
        return h + self.down(ops.tanh(self.up(h)))


class ToyLLM(nn.Cell):
    def __init__(self, hidden, vocab):
        super().__init__()
        self.layers = nn.CellList([Block(hidden), Block(hidden)])
        self.head = nn.Dense(hidden, vocab)

    def construct(self, h):
        hidden_states = ()
        for layer in self.layers:
            h = layer(h)
            hidden_states = hidden_states + (h,)
        return self.head(h), hidden_states


class ToyLM(nn.Cell):
    def __init__(self, features=6, hidden=8, vocab=7, aux_alpha=0.01):
        super().__init__()
        self.adapter = nn.Dense(features, hidden)
        self.llm = ToyLLM(hidden, vocab)
        self.aux_alpha = aux_alpha

    def construct(self, features, labels):
        logits, hidden_states = self.llm(self.adapter(features))
        mask = labels != IGNORE_INDEX
        safe = ops.where(mask, labels, ops.zeros_like(labels))
        log_probs = ops.log_softmax(logits, -1)
        nll = -ops.gather_elements(log_probs, -1, safe.expand_dims(-1)).squeeze(-1)
        weight = mask.astype(ms.float32)
        loss_sum = (nll.astype(ms.float32) * weight).sum()
        num_targets = weight.sum()
        aux_loss = self.aux_alpha * ops.mean(ops.square(hidden_states[0])).astype(ms.float32)
        stats = ops.stack([ops.mean(ops.sigmoid(h)).astype(ms.float32) for h in hidden_states])
        return loss_sum, num_targets, aux_loss, stats


def make_dataset(num_samples=24, seq_len=5, features=6, vocab=7, seed=1234):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, seq_len, features)).astype(np.float32)
    labels = rng.integers(0, vocab, size=(num_samples, seq_len)).astype(np.int32)
    keep = rng.integers(1, seq_len + 1, size=num_samples)  # 1..seq_len targets per sample
    for i, k in enumerate(keep):
        labels[i, k:] = IGNORE_INDEX
    return x, labels


def count_targets(batch) -> int:
    return int((np.asarray(batch["labels"]) != IGNORE_INDEX).sum())


class FixedBatches:
    """The trainer's loader protocol over one batch, handed out again every epoch."""

    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        return iter([self.batch])

    def __len__(self):
        return 1

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class ToyLoader:
    """One rank's micro-batches: in each step, micro m of rank r = the step's samples [(mW + r) b, (mW + r + 1) b)."""

    def __init__(self, data, micro, accum, rank, world, seed, nan_at_step=0, sleep_s=0.0):
        self.x, self.labels = data
        self.micro, self.accum, self.rank, self.world = micro, accum, rank, world
        self.seed = seed
        self.global_batch = micro * accum * world
        self.steps = len(self.x) // self.global_batch
        self.nan_at_step = nan_at_step
        self.sleep_s = sleep_s
        self.epoch, self.position = 0, 0  # position: micro-batches handed out this epoch

    def __len__(self):
        return self.steps * self.accum

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self):
        order = np.random.default_rng(self.seed + self.epoch).permutation(len(self.x))
        while self.position < len(self):
            step, m = divmod(self.position, self.accum)
            start = step * self.global_batch + (m * self.world + self.rank) * self.micro
            index = order[start:start + self.micro]
            batch = {"features": self.x[index].copy(), "labels": self.labels[index].copy()}
            if self.nan_at_step and self.epoch * self.steps + step + 1 == self.nan_at_step:
                batch["features"][:] = np.nan
            self.position += 1
            if self.sleep_s:
                time.sleep(self.sleep_s)
            yield batch
        self.epoch, self.position = self.epoch + 1, 0


def gradient_dumper(directory, rank):
    def hook(trainer, step):
        os.makedirs(directory, exist_ok=True)
        np.savez(os.path.join(directory, f"rank{rank}_step{step}.npz"), **trainer.gradients())

    return hook


def build(config, dist) -> TrainTask:
    opts = dict(config.task_options)
    features, hidden, vocab = opts.get("features", 6), opts.get("hidden", 8), opts.get("vocab", 7)
    network = ToyLM(features, hidden, vocab)
    if config.load_checkpoint:
        load_weights(network, config.load_checkpoint)
    trainable = opts.get("trainable", "adapter")
    if trainable == "lora":
        apply_lora(network, "llm", config.pet_config)
        freeze_all_but(network, ["adapter.*", LORA_PARAM_GLOB])
    elif trainable == "adapter":
        freeze_all_but(network, ["adapter.*"])
    data = make_dataset(opts.get("num_samples", 24), opts.get("seq_len", 5), features, vocab)
    loader = ToyLoader(
        data, config.micro_batch_size, config.grad_accum, dist.rank, dist.world_size, config.seed,
        nan_at_step=opts.get("nan_at_step", 0), sleep_s=opts.get("sleep_s", 0.0),
    )
    hooks = [gradient_dumper(opts["dump_grads_dir"], dist.rank)] if opts.get("dump_grads_dir") else []
    return TrainTask(
        network=network,
        loader=loader,
        input_keys=("features", "labels"),
        count_targets=count_targets,
        count_tokens=lambda b: int(np.asarray(b["labels"]).size),
        stat_names=("layer_0", "layer_1"),
        layer_cells=("llm.layers.0", "llm.layers.1"),
        hooks=hooks,
    )
