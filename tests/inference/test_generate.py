"""Generation with the KV cache: greedy equals full-forward argmax, batching, modes, sampling, stopping."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from tiny_eve import build_model, image_pixels
from eve_ms.config import IMAGE_TOKEN_INDEX
from eve_ms.data.templates import Turn
from eve_ms.inference.generate import Generator
from eve_ms.inference.inputs import chat_prompt_ids
from eve_ms.inference.sampling import GenerationConfig


def prompt(tokenizer, model, text, image=False):
    return chat_prompt_ids(tokenizer, model.config, [Turn("human", text, image)])


def full_forward_logits(model, ids, pixels=None, mode=None):
    """Last-position logits of the whole sequence, no cache (the reference)."""
    if mode is not None:
        model.set_evf_mode(mode)
    try:
        pixel_values = None if pixels is None else Tensor(pixels[None])
        logits = model.forward(Tensor(np.asarray(ids, np.int32)[None]), pixel_values=pixel_values)[0]
        return logits.asnumpy()[0, -1]
    finally:
        model.set_evf_mode("multimodal")


def stepwise_argmax(model, ids, steps, pixels=None, mode=None):
    ids = list(ids)
    tokens, first_logits = [], None
    for _ in range(steps):
        logits = full_forward_logits(model, ids, pixels, mode)
        first_logits = logits if first_logits is None else first_logits
        tokens.append(int(logits.argmax()))
        ids.append(tokens[-1])
    return tokens, first_logits


@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text"])
def test_greedy_kv_cache_generation_equals_stepwise_full_forward_argmax(evf_model, tokenizer, with_image):
    pixels = image_pixels(1) if with_image else None
    ids = prompt(tokenizer, evf_model, "What is in the picture?", with_image)
    assert ((ids == IMAGE_TOKEN_INDEX).sum() == evf_model.config.num_image_tokens) == with_image
    out = Generator(evf_model, tokenizer).generate([ids], [pixels], GenerationConfig(max_new_tokens=3),
                                                   keep_logits=True)[0]
    mode = "multimodal" if with_image else "language_only"
    expected, expected_logits = stepwise_argmax(evf_model, ids, 3, pixels, mode)
    assert out.evf_mode == mode and out.finish_reason == "length"
    np.testing.assert_array_equal(out.token_ids, expected)
    np.testing.assert_allclose(out.logits[0], expected_logits, atol=1e-4)
    if not with_image:
        # text-only prompts take the language-only path automatically: not what multimodal routing gives
        multimodal = full_forward_logits(evf_model, ids, None, "multimodal")
        assert np.abs(out.logits[0] - multimodal).max() > 1e-3


def test_left_padded_batch_equals_each_prompt_alone(evf_model, tokenizer):
    generator = Generator(evf_model, tokenizer)
    prompts = [prompt(tokenizer, evf_model, "Hi"),
               prompt(tokenizer, evf_model, "Describe the image in one sentence.", True),
               prompt(tokenizer, evf_model, "How many birds are there on the fence today?"),
               prompt(tokenizer, evf_model, "What?", True)]
    pixels = [None, image_pixels(2), None, image_pixels(3)]
    assert len({len(p) for p in prompts}) == 4
    config = GenerationConfig(max_new_tokens=2)
    batched = generator.generate(prompts, pixels, config, keep_logits=True)
    for ids, image, together in zip(prompts, pixels, batched):
        alone = generator.generate([ids], [image], config, keep_logits=True)[0]
        assert together.evf_mode == alone.evf_mode == ("multimodal" if image is not None else "language_only")
        np.testing.assert_array_equal(together.token_ids, alone.token_ids)
        np.testing.assert_allclose(together.logits, alone.logits, atol=1e-4)


def test_per_prompt_limits_and_eos_end_samples_while_the_batch_goes_on(evf_model, tokenizer):
    generator = Generator(evf_model, tokenizer)
    prompts = [prompt(tokenizer, evf_model, "Hello"), prompt(tokenizer, evf_model, "The answer is")]
    free = generator.generate(prompts, None, GenerationConfig(max_new_tokens=4))
    eos = int(free[0].token_ids[1])
    stopped = generator.generate(prompts, None, GenerationConfig(max_new_tokens=4, eos_token_id=eos))
    first = list(free[0].token_ids).index(eos)
    assert stopped[0].finish_reason == "eos"
    np.testing.assert_array_equal(stopped[0].token_ids, free[0].token_ids[:first])
    other = list(free[1].token_ids)
    expected = other[:other.index(eos)] if eos in other else other
    np.testing.assert_array_equal(stopped[1].token_ids, expected)

    limited = generator.generate(prompts, None, GenerationConfig(max_new_tokens=4), max_new_tokens=[1, 3])
    assert [len(o.token_ids) for o in limited] == [1, 3]
    assert [o.finish_reason for o in limited] == ["length", "length"]
    np.testing.assert_array_equal(limited[1].token_ids, free[1].token_ids[:3])


def test_stop_string_ends_the_reply_before_it_and_streamed_pieces_add_up(evf_model, tokenizer):
    generator = Generator(evf_model, tokenizer)
    ids = prompt(tokenizer, evf_model, "Describe the image in one sentence.")
    free = generator.generate([ids], None, GenerationConfig(max_new_tokens=6))[0]
    text = free.text
    start = next(i for i in range(1, len(text) - 1) if "\ufffd" not in text[i:i + 2])
    stop = text[start:start + 2]
    pieces = []
    out = generator.generate([ids], None, GenerationConfig(max_new_tokens=6, stop_strings=(stop,)),
                             stream=lambda index, piece: pieces.append((index, piece)))[0]
    assert out.finish_reason == "stop_string"
    assert out.text == text[:text.find(stop)]
    assert "".join(piece for _, piece in pieces) == out.text and {i for i, _ in pieces} <= {0}


def test_sampling_is_reproducible_with_a_seed_and_stays_in_the_top_k_support(evf_model, tokenizer):
    generator = Generator(evf_model, tokenizer)
    prompts = [prompt(tokenizer, evf_model, "Hello"), prompt(tokenizer, evf_model, "What?", True)]
    pixels = [None, image_pixels(4)]

    def sample(seed, count=2):
        config = GenerationConfig(max_new_tokens=3, temperature=2.0, top_k=3, seed=seed)
        return generator.generate(prompts[:count], pixels[:count], config, keep_logits=True)

    first, again, other = sample(7), sample(7), sample(8, count=1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
    assert any(not np.array_equal(a.token_ids, c.token_ids) for a, c in zip(first, other))
    for out in first + other:
        for token, logits in zip(out.token_ids, out.logits):
            assert token in np.argsort(-logits)[:3]


def test_per_prompt_configs_give_each_prompt_its_tokens_alone_and_cancelled_prompts_stop(evf_model, tokenizer):
    """What `eve-ms serve` batches: each prompt's own limit, stop strings and seeded sampling; a cancel."""
    generator = Generator(evf_model, tokenizer)
    prompts = [prompt(tokenizer, evf_model, "Hello"), prompt(tokenizer, evf_model, "What?", True),
               prompt(tokenizer, evf_model, "The answer is")]
    pixels = [None, image_pixels(4), None]
    configs = [GenerationConfig(max_new_tokens=3, temperature=1.5, seed=1),
               GenerationConfig(max_new_tokens=2, temperature=1.5, top_k=5, seed=2),
               GenerationConfig(max_new_tokens=4)]
    batched = generator.generate(prompts, pixels, configs=configs)
    for ids, image, config, together in zip(prompts, pixels, configs, batched):
        alone = generator.generate([ids], [image], config)[0]
        np.testing.assert_array_equal(together.token_ids, alone.token_ids)
        assert together.text == alone.text and together.finish_reason == alone.finish_reason

    polls = []

    def cancelled(index):
        polls.append(index)
        return index == 0 and polls.count(0) > 2  # prompt 0 stops before its third step

    out = generator.generate(prompts[::2], None, configs=[GenerationConfig(max_new_tokens=6)] * 2, cancelled=cancelled)
    assert out[0].finish_reason == "cancelled" and len(out[0].token_ids) == 2
    assert out[1].finish_reason in ("length", "eos") and 1 in polls
    with pytest.raises(ValueError, match="config or configs"):
        generator.generate(prompts[:1], None, GenerationConfig(), configs=[GenerationConfig()])


def test_evf_mode_follows_the_image_the_request_and_the_model_mode(tokenizer, evf_model):
    generator = Generator(evf_model, tokenizer)
    assert generator.evf_mode_for(has_image=True) == "multimodal"
    assert generator.evf_mode_for(has_image=False) == "language_only"
    assert generator.evf_mode_for(has_image=True, language_only=True) == "language_only"
    assert generator.evf_mode_for(has_image=False, language_only=False) == "multimodal"
    moe = build_model(len(tokenizer), mode="moe")
    assert Generator(moe, tokenizer).evf_mode_for(has_image=False) == "moe"  # the ablation has no language path
    dense = build_model(len(tokenizer), evf=False)
    assert Generator(dense, tokenizer).evf_mode_for(has_image=False) is None


def test_bad_prompts_are_named(evf_model, tokenizer):
    generator = Generator(evf_model, tokenizer)
    image_ids = prompt(tokenizer, evf_model, "What?", True)
    with pytest.raises(ValueError, match="prompt 1 has 4 image tokens but no image"):
        generator.generate([[5, 6], image_ids], [None, None])
    with pytest.raises(ValueError, match="prompt 0 has 3 image tokens, an image takes 4"):
        generator.generate([[5] + [IMAGE_TOKEN_INDEX] * 3], [image_pixels(0)])
    with pytest.raises(ValueError, match="exceed max_position_embeddings=160"):
        generator.generate([[5] * 150], None, GenerationConfig(max_new_tokens=20))
    with pytest.raises(ValueError, match="outside 0..399"):
        generator.generate([[5, 400]])
    with pytest.raises(ValueError, match="need a tokenizer"):
        Generator(evf_model).generate([[5, 6]], None, GenerationConfig(stop_strings=("x",)))


def test_graph_mode_generation_equals_pynative(evf_model, tokenizer):
    generator = Generator(evf_model, tokenizer, length_bucket=8)
    prompts = [prompt(tokenizer, evf_model, "Hello there"), prompt(tokenizer, evf_model, "What?", True)]
    pixels = [None, image_pixels(6)]
    config = GenerationConfig(max_new_tokens=2)
    eager = generator.generate(prompts, pixels, config, keep_logits=True)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        compiled = Generator(evf_model, tokenizer, length_bucket=8)
        graph = compiled.generate(prompts, pixels, config, keep_logits=True)
        # cells compiled in one mode keep it: the text prompt alone again reuses its language-only graphs
        again = compiled.generate(prompts[:1], pixels[:1], config, keep_logits=True)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    for e, g in zip(eager, graph):
        assert e.evf_mode == g.evf_mode
        np.testing.assert_array_equal(e.token_ids, g.token_ids)
        np.testing.assert_allclose(e.logits, g.logits, atol=1e-4)
    np.testing.assert_allclose(again[0].logits, eager[0].logits, atol=1e-4)
