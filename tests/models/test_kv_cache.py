"""Greedy decoding with the static KV cache generates exactly the tokens of a full recompute without a cache.

The reference never touches a cache: for each sample alone (no padding), the whole growing sequence
goes through `llm(ids)` and the last position's argmax is the next token. Generation runs the
samples batched and left-padded, at several batch sizes, so a change of the cache, the step graph
or where the argmax is taken cannot change a token unnoticed. Hugging Face's `generate` on the same
weights is the other reference (tests/convert/test_hf_llm.py).
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from eve_ms.config import LLMConfig
from eve_ms.inference.generate import greedy_generate
from eve_ms.models.llm import LLM, LLMDecodeStep

NEW_TOKENS = 12


def tiny_llm(seed: int = 3) -> LLM:
    config = LLMConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                       num_kv_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)
    llm = LLM(config)
    rng = np.random.default_rng(seed)
    for param in llm.get_parameters():  # order-one weights: every token choice depends on the whole context
        scale = 1.5 / np.sqrt(param.shape[-1]) if len(param.shape) == 2 else 0.1
        base = 1.0 if param.name.endswith("norm.weight") else 0.0
        param.set_data(Tensor((base + scale * rng.standard_normal(param.shape)).astype(np.float32)))
    llm.set_train(False)
    return llm


def recompute_greedy(llm: LLM, prompt: np.ndarray, steps: int) -> list:
    """Greedy tokens of one unpadded prompt by full forward passes, no cache."""
    ids = [int(t) for t in prompt]
    out = []
    for _ in range(steps):
        logits = llm(Tensor(np.asarray(ids, np.int32)[None])).asnumpy()[0, -1]
        out.append(int(logits.argmax()))
        ids.append(out[-1])
    return out


def left_padded(prompts: list) -> tuple:
    length = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), length), np.int32)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt):] = prompt
        mask[row, length - len(prompt):] = 1
    return ids, mask


@pytest.fixture(scope="module")
def llm_and_reference():
    llm = tiny_llm()
    rng = np.random.default_rng(11)
    prompts = [rng.integers(3, 97, size) for size in (7, 3, 5, 9)]
    reference = [recompute_greedy(llm, p, NEW_TOKENS) for p in prompts]
    assert len({tuple(r) for r in reference}) == len(prompts)  # the samples really differ
    return llm, prompts, np.asarray(reference, np.int32)


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_greedy_generate_equals_full_recompute_at_every_batch_size(llm_and_reference, batch):
    llm, prompts, reference = llm_and_reference
    step = LLMDecodeStep(llm)
    for first in range(0, len(prompts), batch):
        ids, mask = left_padded(prompts[first:first + batch])
        generated = greedy_generate(step, ids, mask, NEW_TOKENS)
        np.testing.assert_array_equal(generated, reference[first:first + batch])


def test_greedy_generate_in_graph_mode_equals_full_recompute(llm_and_reference, graph_mode):
    llm, prompts, reference = llm_and_reference
    ids, mask = left_padded(prompts)
    step = LLMDecodeStep(llm)
    np.testing.assert_array_equal(greedy_generate(step, ids, mask, NEW_TOKENS), reference)
    # a second generation on the same compiled step (the cache reused, shorter run) changes nothing
    np.testing.assert_array_equal(greedy_generate(step, ids[:, 1:], mask[:, 1:], 4)[1:],
                                  np.asarray([recompute_greedy(llm, p[1:] if len(p) == ids.shape[1] else p, 4)
                                              for p in prompts[1:]]))


def test_eos_ends_a_sample_with_padding_while_the_others_go_on(llm_and_reference):
    llm, prompts, reference = llm_and_reference
    eos = int(reference[0, 2])  # sample 0 emits it at step 2
    ids, mask = left_padded(prompts[:2])
    generated = greedy_generate(LLMDecodeStep(llm), ids, mask, NEW_TOKENS, eos_token_id=eos, pad_token_id=1)
    first_eos = [int(np.argmax(row == eos)) if (row == eos).any() else NEW_TOKENS for row in reference[:2]]
    for row in range(2):
        stop = first_eos[row]
        np.testing.assert_array_equal(generated[row, :stop + 1], reference[row, :stop + 1])
        assert (generated[row, stop + 1:] == 1).all()
    assert first_eos[0] == 2
