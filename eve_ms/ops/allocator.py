"""Token allocation (DESIGN section 3) as composed MindSpore ops, and the dispatch indices built from it.

`allocate_tokens` reproduces `eve_ms.ops.token_allocation.allocate_reference` exactly
(expert, slot, counts) with static shapes, in PyNative and graph mode. `TokenAllocator`
wraps it for a fixed number of token slots, or delegates to a native kernel
(`eve_ms.ops.kernels.KernelAllocation`) when asked for another backend.

Exactness without a stable sort: MindSpore's sort does not promise an order among equal
keys, so no result may depend on it. Priorities are first turned into dense ranks (0 = the
largest value; equal values share a rank, whatever order that first sort gives them). A
second sort then orders the unique integer keys `expert * R*T + rank * T + token_index`
(non-candidates: `2 * R*T + token_index`; R = number of possible ranks, T or 2T): expert 0's
candidates by priority with ties to the lower token index, then expert 1's, then the rest.
A token's position in that order, minus the number of candidates of expert 0 if it prefers
expert 1, is its rank inside its expert. Redistribution repeats the second sort with the
offered tokens keyed by their target expert and their score for it. Keys are int32 while
3 * R*T fits, int64 beyond.

Nothing here builds a dense [T, experts, capacity] dispatch tensor: tokens travel through
`dispatch_indices` ([2, capacity] token index per slot) and `combine_indices` ([T] row of the
concatenated expert outputs per token).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from eve_ms.ops.token_allocation import LANGUAGE, NUM_EXPERTS, VISION, check_allocation_args, compute_capacity

COUNT_NAMES = ("kept_language", "kept_vision", "dropped", "redistributed")


def _count(mask):
    """Number of True entries, int32 (a plain sum would widen to int64)."""
    return mask.astype(ms.int32).sum().astype(ms.int32)


def _inverse_permutation(order):
    """position[order[i]] = i for a permutation `order` [n] int32."""
    n = order.shape[0]
    return ops.scatter_nd(order.reshape(n, 1), ops.arange(n, dtype=ms.int32), (n,))


def _dense_rank_descending(values):
    """Rank of each value among the distinct values, 0 = largest; equal values share a rank."""
    n = values.shape[0]
    if n == 1:
        return ops.zeros((1,), ms.int32)
    sorted_values, order = ops.sort(values, descending=True)
    starts_group = sorted_values[1:] != sorted_values[:-1]
    starts_group = ops.concat((ops.ones((1,), ms.int32), starts_group.astype(ms.int32)))
    rank_sorted = ops.cumsum(starts_group, 0) - 1
    return ops.scatter_nd(order.reshape(n, 1), rank_sorted.astype(ms.int32), (n,))


def _rank_within_group(group, rank, member, num_ranks: int):
    """Rank of each member inside its group (0 or 1) by ascending `rank`, ties to the lower index.

    `rank` [T] int32 lies in [0, num_ranks). Returns (rank_in_group [T] int32, number of members
    in group 0). Non-members get meaningless ranks, to be masked by the caller.
    """
    num_tokens = group.shape[0]
    stride = num_ranks * num_tokens  # keys of one group; 3 strides hold group 0, group 1, non-members
    dtype = ms.int32 if 3 * stride < 2**31 else ms.int64
    index = ops.arange(num_tokens, dtype=dtype)
    key_member = group.astype(dtype) * stride + rank.astype(dtype) * num_tokens + index
    key = ops.where(member, key_member, index + 2 * stride)
    _, order = ops.sort(key)
    position = _inverse_permutation(order.astype(ms.int32))
    first_group_size = _count(ops.logical_and(member, group == 0))
    return position - group * first_group_size, first_group_size


def _priority_ranks(score0, score1, prefers_vision, noise, strategy: str):
    """Dense ranks of each token's priority and of its score for the other expert, and their bound.

    The second rank matters only for img_gbpr's redistribution: one ranking of all 2T scores
    serves both S[x, preferred] and S[x, other].
    """
    num_tokens = score0.shape[0]
    if strategy == "random":
        rank = _dense_rank_descending(noise.astype(ms.float32))
        return rank, rank, num_tokens
    if strategy == "gbpr":
        rank = _dense_rank_descending(ops.where(prefers_vision, score1, score0))
        return rank, rank, num_tokens
    both = _dense_rank_descending(ops.concat((score0, score1)))
    rank0, rank1 = both[:num_tokens], both[num_tokens:]
    return ops.where(prefers_vision, rank1, rank0), ops.where(prefers_vision, rank0, rank1), 2 * num_tokens


def allocate_tokens(probs, is_image, valid, noise, *, strategy: str, capacity: int, beta: float = 1.0,
                    redistribute_ratio: float = 0.5):
    """Allocate the T token slots to the two experts; same semantics as `allocate_reference`
    (non-finite probability rows included: dropped and counted, competing nowhere).

    probs [T, 2] float32, is_image / valid [T] bool, noise [T] float32; `capacity` is a Python
    int (see `compute_capacity`). Returns expert [T] int32 in {-1, 0, 1}, slot [T] int32 (-1 when
    not allocated) and counts [4] int32 (kept by language, kept by vision, dropped, redistributed).
    Usable inside `construct` in graph mode: T comes from the static shape of `probs`.
    """
    num_tokens = probs.shape[0]
    probs = probs.astype(ms.float32)
    # A valid token with a NaN / inf in its row is dropped and counted, and competes nowhere (the reference's
    # policy); its scores are replaced by a finite value so that no sort ever sees a NaN.
    finite = ops.logical_and(ops.isfinite(probs[:, LANGUAGE]), ops.isfinite(probs[:, VISION]))
    competing = ops.logical_and(valid, finite)
    probs = ops.where(finite.reshape(num_tokens, 1), probs, ops.zeros_like(probs))
    if strategy == "img_gbpr":
        # prior [0, beta] for image tokens, [beta, 0] for text tokens, added in float32
        beta32 = ops.full((num_tokens,), beta, dtype=ms.float32)
        image = is_image.astype(ms.float32)
        score0 = probs[:, LANGUAGE] + (1 - image) * beta32
        score1 = probs[:, VISION] + image * beta32
    else:
        score0, score1 = probs[:, LANGUAGE], probs[:, VISION]
    prefers_vision = score1 > score0  # argmax, ties to expert 0
    preferred = prefers_vision.astype(ms.int32)

    priority_rank, other_rank, num_ranks = _priority_ranks(score0, score1, prefers_vision, noise, strategy)
    rank, num_language = _rank_within_group(preferred, priority_rank, competing, num_ranks)
    kept = ops.logical_and(competing, rank < capacity)
    minus_one = ops.full((num_tokens,), -1, dtype=ms.int32)
    expert = ops.where(kept, preferred, minus_one)
    slot = ops.where(kept, rank, minus_one)
    num_vision = _count(competing) - num_language
    used = ops.stack((ops.minimum(num_language, capacity), ops.minimum(num_vision, capacity)))

    if strategy == "img_gbpr":
        overflow = ops.logical_and(competing, ops.logical_not(kept))
        # compared in float32, as the reference does: W rounded to float32 first
        ratio32 = ops.full((num_tokens,), redistribute_ratio, dtype=ms.float32)
        offered = ops.logical_and(overflow, noise.astype(ms.float32) < ratio32)
        target = 1 - preferred
        offer_rank, _ = _rank_within_group(target, other_rank, offered, num_ranks)
        used_by_target = ops.gather(used, target, 0)
        accepted = ops.logical_and(offered, offer_rank < capacity - used_by_target)
        expert = ops.where(accepted, target, expert)
        slot = ops.where(accepted, used_by_target + offer_rank, slot)
        redistributed = _count(accepted)
    else:
        redistributed = ops.zeros((), ms.int32)

    kept_language = _count(expert == LANGUAGE)
    kept_vision = _count(expert == VISION)
    dropped = _count(valid) - kept_language - kept_vision
    counts = ops.stack((kept_language, kept_vision, dropped, redistributed))
    return expert, slot, counts


def dispatch_indices(expert, slot, capacity: int):
    """[2, capacity] int32: the token in each expert slot, or T for an empty slot.

    T indexes the zero row appended to the [T, H] tokens, so gathering with these indices
    fills empty slots with zeros. Each allocated token owns exactly one slot.
    """
    num_tokens = expert.shape[0]
    allocated = expert >= 0
    spill = NUM_EXPERTS * capacity  # one extra cell collects the unallocated tokens' zeros
    flat = ops.where(allocated, expert * capacity + slot, ops.full((num_tokens,), spill, dtype=ms.int32))
    token = ops.arange(num_tokens, dtype=ms.int32)
    offset = ops.where(allocated, token - num_tokens, ops.zeros((num_tokens,), ms.int32))
    table = ops.scatter_nd(flat.reshape(num_tokens, 1), offset, (spill + 1,)) + num_tokens
    return table[:spill].reshape(NUM_EXPERTS, capacity)


def combine_indices(expert, slot, capacity: int):
    """[T] int32: each token's row in concat(expert-0 outputs, expert-1 outputs, one zero row)."""
    num_tokens = expert.shape[0]
    spill = ops.full((num_tokens,), NUM_EXPERTS * capacity, dtype=ms.int32)
    return ops.where(expert >= 0, expert * capacity + slot, spill)


class TokenAllocator(nn.Cell):
    """Token allocation for a fixed number of token slots T (static shapes).

    construct(probs [T,2] f32, is_image [T] bool, valid [T] bool, noise [T] f32)
    -> (expert [T] int32, slot [T] int32, counts [4] int32 = kept0, kept1, dropped, redistributed).
    `backend="composed"` runs MindSpore ops; any other backend delegates to
    `eve_ms.ops.kernels.KernelAllocation`, imported only then.
    """

    def __init__(self, num_tokens: int, strategy: str, capacity_factor: float = 1.5, min_capacity: int = 4,
                 beta: float = 1.0, redistribute_ratio: float = 0.5, backend: str = "composed"):
        super().__init__()
        check_allocation_args(strategy, beta, redistribute_ratio)
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.num_tokens = num_tokens
        self.strategy = strategy
        self.capacity = compute_capacity(num_tokens, capacity_factor, min_capacity)
        self.beta = float(beta)
        self.redistribute_ratio = float(redistribute_ratio)
        self.backend = backend
        self.kernel = None
        if backend != "composed":
            from eve_ms.ops.kernels import KernelAllocation

            self.kernel = KernelAllocation(backend, num_tokens, strategy, self.capacity, self.beta,
                                           self.redistribute_ratio)

    def construct(self, probs, is_image, valid, noise):
        if probs.shape != (self.num_tokens, NUM_EXPERTS):
            raise ValueError(f"TokenAllocator built for {self.num_tokens} tokens: probs must have shape "
                             f"[{self.num_tokens}, {NUM_EXPERTS}], got {probs.shape}")
        if self.kernel is not None:
            return self.kernel(probs, is_image, valid, noise)
        return allocate_tokens(probs, is_image, valid, noise, strategy=self.strategy, capacity=self.capacity,
                               beta=self.beta, redistribute_ratio=self.redistribute_ratio)

    def dispatch_indices(self, expert, slot):
        """[2, capacity] token index per expert slot (T for an empty slot)."""
        return dispatch_indices(expert, slot, self.capacity)
