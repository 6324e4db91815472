"""Token allocation between the language FFN (expert 0) and the vision FFN (expert 1).

This is the numpy reference of DESIGN section 3: the specification every backend
(MindSpore composed ops, C++/CUDA/AscendC kernels) must reproduce exactly. It is
written for clarity, not speed.

Semantics, in full:
- capacity per expert `cap = min(T, max(min_capacity, ceil(capacity_factor * T / 2)))`
  with T all token slots (padding included), so buffers have static shapes. It is
  computed once on the host (`compute_capacity`) and handed to kernels as an attribute.
- preferred expert: argmax P (random, gbpr) or argmax S (img_gbpr), S = P + prior with
  prior [0, beta] for image tokens and [beta, 0] for text tokens, added in float32.
  Ties in the argmax go to expert 0.
- priority inside an expert: noise (random), P[x, pref] (gbpr), S[x, pref] (img_gbpr).
- each expert keeps its `cap` highest-priority tokens, ties to the lower token index;
  slots 0..kept-1 are assigned in that order.
- img_gbpr only: an overflowed token with noise < W is offered to the other expert,
  which accepts offers by S[x, other] (ties to the lower index) into its remaining
  slots, continuing its slot numbering. Everything else overflowed is dropped.
- padding (valid = False) never competes, never counts: expert = slot = -1.
- non-finite router probabilities (a NaN or inf in either entry of a valid token's row):
  the token is dropped (expert = slot = -1, counted in `dropped`); it takes no slot, is
  never offered for redistribution and leaves every other token's allocation as if it
  were padding. Its FFN output is zero like any dropped token's. Nothing is silently
  routed: in training the aux loss averages P over valid tokens, so the loss becomes
  non-finite and the trainer's NaN detection reports the step.
"""
from __future__ import annotations

import math

import numpy as np

STRATEGIES = ("random", "gbpr", "img_gbpr")
# The int each strategy is passed as to the native kernels (allocation_common.h, the AscendC op's attribute).
STRATEGY_CODES = {name: code for code, name in enumerate(STRATEGIES)}
NUM_EXPERTS = 2
LANGUAGE, VISION = 0, 1  # expert indices: row e of the router weight, column e of P


def check_allocation_args(strategy: str, beta: float, redistribute_ratio: float) -> None:
    """The checks of the arguments every backend fixes at build time (the reference, the composed
    allocator and the native kernels call this one); `EVFConfig` names the yaml key for a user."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if not 0.0 <= redistribute_ratio <= 1.0:
        raise ValueError(f"redistribute_ratio (W) must be in [0, 1], got {redistribute_ratio}")
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")


def compute_capacity(num_tokens: int, capacity_factor: float, min_capacity: int) -> int:
    """Slots per expert buffer; static for a given batch shape."""
    if capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be > 0, got {capacity_factor}")
    if min_capacity < 0:
        raise ValueError(f"min_capacity must be >= 0, got {min_capacity}")
    return int(min(num_tokens, max(min_capacity, math.ceil(capacity_factor * num_tokens / NUM_EXPERTS))))


def preference_scores(probs: np.ndarray, is_image: np.ndarray, strategy: str, beta: float) -> np.ndarray:
    """Scores whose argmax is the preferred expert: P, or S = P + modality prior for img_gbpr."""
    if strategy != "img_gbpr":
        return probs
    beta32 = np.float32(beta)
    prior = np.where(is_image[:, None], np.array([0, 1], np.float32), np.array([1, 0], np.float32)) * beta32
    return (probs + prior.astype(np.float32)).astype(np.float32)


def _order(priority: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Token indices of `candidates` by descending priority, ties to the lower index."""
    idx = np.flatnonzero(candidates)
    # lexsort: last key is primary. -priority is exact in float32.
    return idx[np.lexsort((idx, -priority[idx]))]


def _check_inputs(probs, is_image, valid, noise, strategy, capacity_factor, min_capacity, beta, redistribute_ratio):
    check_allocation_args(strategy, beta, redistribute_ratio)
    if probs.ndim != 2 or probs.shape[1] != NUM_EXPERTS:
        raise ValueError(f"probs must have shape [T, {NUM_EXPERTS}], got {probs.shape}")
    num_tokens = probs.shape[0]
    for name, arr in (("is_image", is_image), ("valid", valid), ("noise", noise)):
        if arr.shape != (num_tokens,):
            raise ValueError(f"{name} must have shape [{num_tokens}] to match probs, got {arr.shape}")
    if capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be > 0, got {capacity_factor}")
    if min_capacity < 0:
        raise ValueError(f"min_capacity must be >= 0, got {min_capacity}")


def allocate_reference(
    probs,
    is_image,
    valid,
    noise,
    *,
    strategy: str,
    capacity_factor: float = 1.5,
    min_capacity: int = 4,
    beta: float = 1.0,
    redistribute_ratio: float = 0.5,
) -> dict:
    """Allocate T token slots to the two experts; numpy in, dict of numpy arrays out.

    Returns `expert` [T] int32 in {-1, 0, 1}, `slot` [T] int32 (-1 when not allocated),
    `kept` [2] int32 tokens per expert (redistributed ones included), `dropped` (valid
    tokens allocated nowhere), `redistributed` (overflow accepted by the other expert),
    and `capacity`.
    """
    probs = np.asarray(probs, dtype=np.float32)
    is_image = np.asarray(is_image).astype(bool)
    valid = np.asarray(valid).astype(bool)
    noise = np.asarray(noise, dtype=np.float32)
    _check_inputs(probs, is_image, valid, noise, strategy, capacity_factor, min_capacity, beta, redistribute_ratio)

    num_tokens = probs.shape[0]
    capacity = compute_capacity(num_tokens, capacity_factor, min_capacity)
    competing = valid & np.all(np.isfinite(probs), axis=1)  # non-finite rows are dropped, see the module doc
    with np.errstate(invalid="ignore"):
        scores = preference_scores(probs, is_image, strategy, beta)
    preferred = np.argmax(scores, axis=1)  # ties -> expert 0
    if strategy == "random":
        priority = noise
    else:
        priority = scores[np.arange(num_tokens), preferred]

    expert = np.full(num_tokens, -1, np.int32)
    slot = np.full(num_tokens, -1, np.int32)
    overflow = np.zeros(num_tokens, bool)
    for e in range(NUM_EXPERTS):
        order = _order(priority, competing & (preferred == e))
        kept, rest = order[:capacity], order[capacity:]
        expert[kept] = e
        slot[kept] = np.arange(len(kept), dtype=np.int32)
        overflow[rest] = True

    redistributed = 0
    if strategy == "img_gbpr":
        offered = overflow & (noise < np.float32(redistribute_ratio))
        used = [int(np.sum(expert == e)) for e in range(NUM_EXPERTS)]
        for target in range(NUM_EXPERTS):
            source = 1 - target
            order = _order(scores[:, target], offered & (preferred == source))
            accepted = order[: max(capacity - used[target], 0)]
            expert[accepted] = target
            slot[accepted] = used[target] + np.arange(len(accepted), dtype=np.int32)
            redistributed += len(accepted)

    kept_counts = np.array([np.sum(expert == e) for e in range(NUM_EXPERTS)], np.int32)
    return {
        "expert": expert,
        "slot": slot,
        "kept": kept_counts,
        "dropped": np.int32(int(valid.sum()) - int(kept_counts.sum())),
        "redistributed": np.int32(redistributed),
        "capacity": capacity,
    }


def aux_loss_reference(probs, expert, valid) -> float:
    """L_aux = sum_e F_e * G_e over valid tokens (paper): F_e the fraction dispatched to e, G_e the mean P[:, e]."""
    probs = np.asarray(probs, np.float64)
    valid = np.asarray(valid, bool)
    n = max(int(valid.sum()), 1)
    total = 0.0
    for e in range(NUM_EXPERTS):
        frac = np.sum((np.asarray(expert) == e) & valid) / n
        mean_p = np.sum(probs[valid, e]) / n
        total += frac * mean_p
    return float(total)
