"""Rotary position tables (cos, sin) of the LLM, per Hugging Face's rope types, in numpy.

Kept apart from eve_ms/models/llm.py, which builds them into its attention, because
eve_ms/ops/fused.py also reads the YaRN attention factor (to tell whether the fused rotary
operator may run) and must not import the LLM that imports it.
"""
from __future__ import annotations

import math

import numpy as np

from eve_ms.config import LLMConfig


def _rope_scaling(config: LLMConfig) -> tuple[str, dict]:
    return config.rope_type, dict(config.rope_scaling or {})  # LLMConfig checks type and keys


def rope_inverse_frequencies(config: LLMConfig) -> tuple[np.ndarray, float]:
    """Inverse frequencies [head_dim / 2] (float32) and the cos/sin scale, per Hugging Face's rope types.

    `dynamic` (NTK-aware) rescales the base as a function of the sequence length; with static shapes
    the base is fixed once, for a sequence of `max_position_embeddings` tokens measured against
    `rope_scaling['original_max_position_embeddings']` (default: `max_position_embeddings`). With the
    default that is the unscaled base, which is exactly what Hugging Face uses for every sequence
    that fits the trained length. To run longer sequences, raise `max_position_embeddings` and set
    `original_max_position_embeddings` to the trained length: the whole table then uses the NTK base
    of the new static length (Hugging Face would use the base of the current length).
    """
    rope_type, scaling = _rope_scaling(config)
    dim = config.dim_per_head
    base = float(config.rope_theta)
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    attention_factor = 1.0

    if rope_type == "dynamic":
        factor = float(scaling["factor"])
        original = scaling.get("original_max_position_embeddings") or config.max_position_embeddings
        length = max(config.max_position_embeddings, original)
        base = base * ((factor * length / original) - (factor - 1)) ** (dim / (dim - 2))

    inv_freq = (1.0 / (base ** exponents.astype(np.float64))).astype(np.float32)

    if rope_type == "linear":
        inv_freq = inv_freq / np.float32(scaling["factor"])
    elif rope_type == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq.astype(np.float64)
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    elif rope_type == "yarn":
        inv_freq, attention_factor = _yarn_inverse_frequencies(config, scaling, exponents)
    return inv_freq, attention_factor


def _yarn_inverse_frequencies(config: LLMConfig, scaling: dict, exponents: np.ndarray) -> tuple[np.ndarray, float]:
    """YaRN: interpolate low frequencies, keep high ones, blend with a linear ramp; scale cos/sin."""
    dim = config.dim_per_head
    base = float(config.rope_theta)
    factor = float(scaling["factor"])
    original = scaling.get("original_max_position_embeddings") or config.max_position_embeddings

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention_factor = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations):
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    pos_freqs = (base ** exponents.astype(np.float64)).astype(np.float32)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq.astype(np.float32), float(attention_factor)


def rope_tables(config: LLMConfig, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables [length, head_dim] (default length: max_position_embeddings), float32.

    The angle is formed in float32 as Hugging Face does (position * inv_freq), so tables match its
    rotary embedding to rounding.
    """
    length = length or config.max_position_embeddings
    inv_freq, attention_factor = rope_inverse_frequencies(config)
    angles = np.arange(length, dtype=np.float32)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=-1).astype(np.float64)
    return (
        (np.cos(angles) * attention_factor).astype(np.float32),
        (np.sin(angles) * attention_factor).astype(np.float32),
    )
