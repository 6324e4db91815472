"""Data-parallel plumbing: rank and world size under msrun, collective sums, rank-0-only writing.

`msrun --worker_num=N --local_worker_num=N script ...` starts N workers with MindSpore's
cluster variables (MS_ROLE=MS_WORKER, MS_WORKER_NUM, MS_SCHED_HOST/PORT, RANK_ID);
`mindspore.communication.init()` then builds the world group on any device target (on CPU
its collectives run over the scheduler's TCP transport). msrun also runs the same script once
as the scheduler (MS_ROLE=MS_SCHED), whose `init()` serves the cluster until the job ends;
that process then exits without training. Without those variables a run is one process:
rank 0 of a world of 1, and every collective here is the identity.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and plots."""
        return self.rank == 0


_current = DistInfo()


def launched_by_msrun() -> bool:
    return os.environ.get("MS_ROLE") in ("MS_WORKER", "MS_SCHED") and "MS_WORKER_NUM" in os.environ


def init_distributed() -> DistInfo:
    """Join the msrun job if there is one (after `mindspore.set_context`); returns this process's place.

    In msrun's scheduler process this serves the cluster and then exits the process.
    """
    global _current
    if not launched_by_msrun():
        _current = DistInfo()
        return _current
    from mindspore.communication import get_group_size, get_rank, init

    init()
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        sys.exit(0)
    _current = DistInfo(rank=get_rank(), world_size=get_group_size())
    return _current


def current() -> DistInfo:
    return _current


def all_reduce_sum(values, dist: DistInfo | None = None) -> np.ndarray:
    """Sum a small float vector over all ranks (float32 on the wire; exact for counts below 2**24)."""
    dist = dist or _current
    array = np.asarray(values, dtype=np.float32).reshape(-1)
    if dist.world_size == 1:
        return array.copy()
    import mindspore as ms
    from mindspore import ops

    return ops.AllReduce()(ms.Tensor(array)).asnumpy()
