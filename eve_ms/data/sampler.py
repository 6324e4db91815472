"""Which records go into which micro-batch: a pure function of (seed, epoch, rank, and the batch split).

One seeded order of *global batches* (the samples of one optimizer step, G = micro batch x
world size x gradient accumulation) is shared by all ranks. In global batch s, micro-batch m
of rank r holds its samples [(m * world + r) * b, (m * world + r + 1) * b). So ranks get
disjoint shards, all ranks see the same modality in a step, and the samples of a step do not
depend on how G is split into ranks and accumulation steps (a run may resume with another
split of the same G). Resuming at a position is exact: nothing depends on what was read before.

Per epoch, with `group_by_modality`: image records and text-only records are shuffled apart
(numpy Generator seeded by [seed, epoch]), each cut into global batches (the last incomplete one
filled up cyclically from the start of the same modality's order, or dropped with `drop_last`),
and the global batches of both modalities are then shuffled together. LLaVA's
`group_by_modality_length` also sorts by length inside mega-batches; with fixed length buckets
that buys nothing here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class BatchPlan:
    has_image: np.ndarray  # bool [N] per record of the index
    batch_size: int  # micro batch per rank
    world_size: int = 1
    accumulation_steps: int = 1
    seed: int = 0
    shuffle: bool = True
    group_by_modality: bool = True
    drop_last: bool = False

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step, over all ranks and accumulation steps."""
        return self.batch_size * self.world_size * self.accumulation_steps

    @property
    def samples_per_micro_step(self) -> int:
        """Samples one micro-batch on every rank covers together."""
        return self.batch_size * self.world_size

    def groups(self) -> list[np.ndarray]:
        """Record indices that may share a global batch, ascending."""
        if not self.group_by_modality:
            return [np.arange(len(self.has_image))]
        groups = [np.flatnonzero(self.has_image), np.flatnonzero(~self.has_image)]
        return [g for g in groups if len(g)]

    def _group_batch_counts(self) -> list[int]:
        g = self.global_batch_size
        return [len(group) // g if self.drop_last else -(-len(group) // g) for group in self.groups()]

    @property
    def global_steps_per_epoch(self) -> int:
        return sum(self._group_batch_counts())

    @property
    def steps_per_epoch(self) -> int:
        """Micro-batches per epoch on each rank."""
        return self.global_steps_per_epoch * self.accumulation_steps

    def global_batches(self, epoch: int) -> np.ndarray:
        """int64 [global_steps_per_epoch, global_batch_size] record indices of the epoch's global batches."""
        rng = np.random.default_rng([self.seed, epoch])
        g = self.global_batch_size
        batches = []
        for group, count in zip(self.groups(), self._group_batch_counts()):
            order = rng.permutation(group) if self.shuffle else group
            order = np.resize(order, count * g)  # np.resize repeats cyclically to fill the last batch
            batches.append(order.reshape(count, g))
        batches = np.concatenate(batches) if batches else np.zeros((0, g), np.int64)
        if self.shuffle:
            batches = batches[rng.permutation(len(batches))]
        else:
            batches = batches[np.argsort(batches[:, 0], kind="stable")]
        return batches.astype(np.int64)

    def rank_batches(self, epoch: int, rank: int) -> np.ndarray:
        """int64 [steps_per_epoch, batch_size]: this rank's micro-batches, in order."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside world size {self.world_size}")
        steps = self.global_batches(epoch).reshape(-1, self.accumulation_steps, self.world_size, self.batch_size)
        return steps[:, :, rank].reshape(-1, self.batch_size)

    def replacements(self, record: int):
        """Records that may stand in for a bad `record`: the following ones of the same group, cyclically."""
        group = next(g for g in self.groups() if record in g)
        start = int(np.searchsorted(group, record))
        for k in range(1, len(group)):
            yield int(group[(start + k) % len(group)])
