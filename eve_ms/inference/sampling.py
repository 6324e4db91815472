"""Choosing the next token from logits on the host: greedy, or temperature / top-k / top-p sampling.

Sampling runs in numpy on the last position's logits (float32 [B, V]) with a
`numpy.random.Generator`, so a seed reproduces a generation on any backend. The filters
apply in Hugging Face's order: temperature, then top-k, then top-p (nucleus: the smallest
set of most likely tokens whose probability reaches top_p; the most likely token always
stays). Ties at the top-k / top-p boundary keep every token tied with the last one kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class GenerationConfig:
    """How to decode. temperature 0 = greedy (argmax, ties to the lowest token id)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter
    seed: Optional[int] = None  # sampling seed; None = fresh entropy (greedy ignores it)
    stop_strings: tuple = field(default_factory=tuple)  # stop when the decoded text contains one
    eos_token_id: Optional[int] = None  # None = the generator's (tokenizer's, else the config's)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        self.stop_strings = tuple(self.stop_strings)
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def filtered_probabilities(logits: np.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Sampling distribution [B, V] (float64) after temperature, top-k and top-p; zero outside the kept set."""
    if temperature <= 0:
        raise ValueError("filtered_probabilities needs temperature > 0 (temperature 0 is greedy decoding)")
    scores = np.asarray(logits, np.float64) / temperature
    if scores.ndim != 2:
        raise ValueError(f"logits must be [batch, vocab], got shape {scores.shape}")
    vocab = scores.shape[1]
    if 0 < top_k < vocab:
        kth = np.partition(scores, vocab - top_k, axis=1)[:, vocab - top_k][:, None]
        scores = np.where(scores >= kth, scores, -np.inf)
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    if top_p < 1.0:
        ordered = -np.sort(-probs, axis=1)
        before = np.cumsum(ordered, axis=1) - ordered  # mass of the strictly more likely tokens
        kept = before < top_p  # a token is kept while the mass before it has not reached top_p
        threshold = np.where(kept, ordered, np.inf).min(axis=1, keepdims=True)
        probs = np.where(probs >= threshold, probs, 0.0)
        probs /= probs.sum(axis=1, keepdims=True)
    return probs


def next_tokens(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> np.ndarray:
    """One token id per row of logits [B, V]: argmax when greedy, else a draw from the filtered distribution."""
    logits = np.asarray(logits, np.float32)
    if config.greedy:
        return logits.argmax(axis=1).astype(np.int32)
    probs = filtered_probabilities(logits, config.temperature, config.top_k, config.top_p)
    cumulative = np.cumsum(probs, axis=1)
    draws = rng.random(len(probs))[:, None] * cumulative[:, -1:]
    # inverse CDF; tokens of zero probability never satisfy draw < cumulative first
    tokens = (cumulative <= draws).sum(axis=1)
    return np.minimum(tokens, probs.shape[1] - 1).astype(np.int32)
