"""Host-side token choice: filters against Hugging Face's logits warpers, draws against the distribution."""
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from eve_ms.inference.sampling import GenerationConfig, filtered_probabilities, next_tokens


def hf_kept(logits, temperature, top_k, top_p):
    scores = torch.tensor(logits, dtype=torch.float64)
    scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.isfinite(scores).numpy()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 5, 1.0), (0.7, 0, 0.8), (1.3, 10, 0.6), (0.5, 0, 0.3),
                                                     (2.0, 3, 0.95)])
def test_kept_tokens_are_those_hugging_face_keeps(temperature, top_k, top_p):
    logits = np.random.default_rng(0).normal(0, 2, (6, 40))
    probs = filtered_probabilities(logits, temperature, top_k, top_p)
    np.testing.assert_array_equal(probs > 0, hf_kept(logits, temperature, top_k, top_p))
    np.testing.assert_allclose(probs.sum(1), 1.0)


def test_kept_probabilities_keep_their_ratios():
    logits = np.array([[3.0, 2.0, 1.0, 0.0, -1.0]])
    probs = filtered_probabilities(logits, 1.0, top_k=3)
    full = np.exp(logits[0]) / np.exp(logits[0]).sum()
    np.testing.assert_allclose(probs[0, :3], full[:3] / full[:3].sum())
    assert (probs[0, 3:] == 0).all()


def test_draws_follow_the_filtered_distribution_and_repeat_with_the_seed():
    logits = np.tile(np.array([[2.0, 1.5, 1.0, 0.2, -3.0, 0.9]]), (40000, 1)).astype(np.float32)
    config = GenerationConfig(temperature=0.9, top_p=0.9, seed=3)
    tokens = next_tokens(logits, config, np.random.default_rng(3))
    expected = filtered_probabilities(logits[:1], 0.9, 0, 0.9)[0]
    frequencies = np.bincount(tokens, minlength=6) / len(tokens)
    np.testing.assert_allclose(frequencies, expected, atol=0.01)
    assert (frequencies[expected == 0] == 0).all()
    np.testing.assert_array_equal(tokens, next_tokens(logits, config, np.random.default_rng(3)))


def test_greedy_takes_the_first_maximum():
    logits = np.array([[0.0, 5.0, 5.0, 1.0], [7.0, 0.0, 7.0, 7.0]], np.float32)
    np.testing.assert_array_equal(next_tokens(logits, GenerationConfig(), np.random.default_rng(0)), [1, 0])


@pytest.mark.parametrize("field,value", [("temperature", -1.0), ("top_k", -2), ("top_p", 0.0), ("top_p", 1.5),
                                         ("max_new_tokens", 0), ("stop_strings", ("",))])
def test_bad_settings_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        GenerationConfig(**{field: value})
