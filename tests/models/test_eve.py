"""EveForCausalLM: image tokens spliced in place of the placeholders, the modality mask reaching EVF layers."""
import mindspore as ms
import numpy as np
import pytest

from eve_ms.config import IMAGE_TOKEN_INDEX, AdapterConfig, EVFConfig, EveConfig, LLMConfig, VisionConfig
from eve_ms.models.eve import EveForCausalLM, splice_image_tokens
from eve_ms.models.evf import NUM_ROUTING_STATS, ROUTING_STAT_NAMES

N_IMG = 4  # 32x32 pixels, patch 8 -> 4x4 grid -> LDP -> 2x2


def _config(evf=False, **evf_kwargs):
    return EveConfig(
        vision=VisionConfig(backbone="siglip", image_size=32, patch_size=8, hidden_size=32, intermediate_size=48,
                            num_layers=2, num_heads=2),
        adapter=AdapterConfig(type="ldp"),
        llm=LLMConfig(vocab_size=80, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                      max_position_embeddings=64),
        evf=EVFConfig(enabled=evf, **evf_kwargs),
    )


def _batch(rng, b=2, s=12, image_at=(2, 1)):
    ids = rng.integers(3, 80, (b, s)).astype(np.int32)
    for row, start in enumerate(image_at):
        if start is not None:
            ids[row, start:start + N_IMG] = IMAGE_TOKEN_INDEX
    mask = np.ones((b, s), np.int32)
    mask[-1, -2:] = 0
    labels = np.where(ids == IMAGE_TOKEN_INDEX, -100, ids).astype(np.int32)
    labels[mask == 0] = -100
    pixels = rng.standard_normal((b, 3, 32, 32)).astype(np.float32)
    return ids, mask, labels, pixels


def test_splice_puts_the_kth_image_feature_at_the_kth_image_position(rng):
    b, s, n, h = 2, 9, 3, 5
    text = rng.standard_normal((b, s, h)).astype(np.float32)
    image = rng.standard_normal((b, n, h)).astype(np.float32)
    is_image = np.zeros((b, s), bool)
    is_image[0, 4:7] = True  # sample 1 is text-only
    out = splice_image_tokens(ms.Tensor(text), ms.Tensor(image), ms.Tensor(is_image)).asnumpy()
    expected = text.copy()
    expected[0, 4:7] = image[0]
    np.testing.assert_array_equal(out, expected)


def test_image_positions_carry_the_adapter_output(rng):
    model = EveForCausalLM(_config())
    ids, _, _, pixels = _batch(rng)
    embeds, is_image = model.embed_inputs(ms.Tensor(ids), ms.Tensor(pixels))
    features = model.encode_images(ms.Tensor(pixels)).asnumpy()
    embeds = embeds.asnumpy()
    np.testing.assert_array_equal(is_image.asnumpy(), ids == IMAGE_TOKEN_INDEX)
    np.testing.assert_array_equal(embeds[0, 2:2 + N_IMG], features[0])
    np.testing.assert_array_equal(embeds[1, 1:1 + N_IMG], features[1])
    text_embeds = model.llm.embed(ms.Tensor(np.where(ids == IMAGE_TOKEN_INDEX, 0, ids))).asnumpy()
    np.testing.assert_array_equal(embeds[0, :2], text_embeds[0, :2])


def test_text_only_batch_equals_the_llm_alone(rng):
    model = EveForCausalLM(_config())
    ids, mask, labels, _ = _batch(rng, image_at=(None, None))
    logits, loss_sum, count, _, _ = model.forward(ms.Tensor(ids), ms.Tensor(mask), labels=ms.Tensor(labels))
    np.testing.assert_array_equal(logits.asnumpy(), model.llm(ms.Tensor(ids), ms.Tensor(mask)).asnumpy())
    assert count.asnumpy() == ((labels[:, 1:] != -100).sum())


def test_training_forward_is_the_same_in_graph_and_pynative(rng):
    model = EveForCausalLM(_config())
    inputs = [ms.Tensor(a) for a in _batch(rng)]
    ms.set_context(mode=ms.PYNATIVE_MODE)
    eager = [o.asnumpy() for o in model(*inputs)]
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        graph = [o.asnumpy() for o in model(*inputs)]
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(graph[0], eager[0], rtol=1e-5)
    assert graph[1] == eager[1]
    assert eager[2] == 0 and eager[3].shape == (0, 0)  # no EVF layers: no aux loss, no routing statistics


@pytest.mark.parametrize("strategy", ["img_gbpr"])
def test_modality_mask_reaches_the_evf_layers(rng, strategy):
    # With a prior far above any router probability, every image token prefers the vision FFN and
    # every text token the language FFN; capacity_factor 2 gives each expert room for all T tokens.
    model = EveForCausalLM(_config(evf=True, strategy=strategy, beta=10.0, capacity_factor=2.0))
    ids, mask, labels, pixels = _batch(rng)
    _, _, _, _, stats = model.forward(ms.Tensor(ids), ms.Tensor(mask), ms.Tensor(pixels), ms.Tensor(labels))
    stats = stats.asnumpy()
    n_image = (ids == IMAGE_TOKEN_INDEX).sum()
    assert stats.shape == (1, NUM_ROUTING_STATS)
    counts = dict(zip(ROUTING_STAT_NAMES, stats[0]))
    assert counts["valid"] == mask.sum()
    assert counts["kept_vision"] == n_image and counts["kept_language"] == counts["valid"] - n_image
    assert counts["dropped"] == 0
    # the same counts over image tokens alone: every one kept by the vision FFN
    assert counts["image_valid"] == counts["image_kept_vision"] == n_image
    assert counts["image_kept_language"] == counts["image_dropped"] == 0
