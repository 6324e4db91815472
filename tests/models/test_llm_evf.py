"""Stage 3 at the LLM level: dense -> EVF conversion, the language-only promise, freezing, aux losses.

Bit-exact multimodal comparisons use row counts that are multiples of 48 (see tests/models/test_evf.py).
"""
import mindspore as ms
import numpy as np
import pytest

from eve_ms.config import EVFConfig, LLMConfig
from eve_ms.models.evf import NUM_ROUTING_STATS, EVFLayer
from eve_ms.models.evf_convert import convert_dense_to_evf, dense_source_name
from eve_ms.training.trainable import freeze_for_stage3
from eve_ms.models.llm import LLM
from eve_ms.ops.token_allocation import allocate_reference, aux_loss_reference

CONFIG = LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4, num_kv_heads=2)
BATCH, SEQ = 2, 16


def _evf_config(**overrides):
    return EVFConfig(**{"enabled": True, "layers": "alternate", "kernel": "composed", **overrides})


@pytest.fixture(scope="module")
def dense_llm():
    ms.set_seed(0)
    return LLM(CONFIG)


def _batch(seed=0, left_pad=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, CONFIG.vocab_size, (BATCH, SEQ)).astype(np.int32)
    mask = np.ones((BATCH, SEQ), np.int32)
    mask[1, :left_pad] = 0  # a left-padded sample: its padding never competes for the experts
    is_image = np.zeros((BATCH, SEQ), bool)
    is_image[:, 2:10] = True  # 8 image tokens per sample, as a spliced image would be
    labels = np.where(mask == 1, ids, -100).astype(np.int32)
    labels[is_image] = -100
    return ids, mask, is_image, labels


def _forward(llm, ids, mask, is_image=None, noise=None, labels=None):
    embeds = llm.embed(ms.Tensor(ids))
    args = [ms.Tensor(a) if a is not None else None for a in (mask, is_image, noise, labels)]
    return llm.forward_embeds(embeds, *args)


def test_conversion_copies_every_weight_and_the_dense_ffn_into_both_experts(dense_llm):
    evf_llm = convert_dense_to_evf(dense_llm, _evf_config())
    assert evf_llm.model.evf_layer_indices == [0, 2]
    dense = dict(dense_llm.parameters_and_names())
    routers = 0
    for name, param in evf_llm.parameters_and_names():
        source = dense_source_name(name)
        if source is None:
            routers += 1
            weight = param.asnumpy()
            assert 0 < np.abs(weight).max() < 0.2 and weight.std() == pytest.approx(0.02, rel=0.3)
            continue
        np.testing.assert_array_equal(param.asnumpy(), dense[source].asnumpy())
    assert routers == 2
    assert dense_source_name("model.layers.2.mlp.vision_ffn.down_proj.weight") == "model.layers.2.mlp.down_proj.weight"
    zero_router = convert_dense_to_evf(dense_llm, _evf_config(), router_init_std=0.0)
    assert not np.any(zero_router.model.layers[0].mlp.router.weight.asnumpy())
    with pytest.raises(ValueError, match="already has EVF layers"):
        convert_dense_to_evf(evf_llm, _evf_config())


def test_language_only_logits_are_bit_identical_to_the_dense_model(dense_llm, any_mode):
    evf_llm = convert_dense_to_evf(dense_llm, _evf_config(layers="all"))
    evf_llm.set_evf_mode("language_only")
    ids, mask, is_image, _ = _batch()
    noise = np.random.default_rng(1).random((3, BATCH, SEQ)).astype(np.float32)
    dense_logits = _forward(dense_llm, ids, mask)[0].asnumpy()
    logits, _, _, aux, stats = _forward(evf_llm, ids, mask, is_image, noise)
    np.testing.assert_array_equal(logits.asnumpy().view(np.uint32), dense_logits.view(np.uint32))
    assert float(aux.asnumpy()) == 0.0
    image = (is_image & mask.astype(bool)).sum()
    np.testing.assert_array_equal(stats.asnumpy(), np.tile([mask.sum(), mask.sum(), 0, 0, 0, image, image, 0, 0, 0],
                                                           (3, 1)))


def test_multimodal_logits_at_conversion_equal_the_dense_model_when_nothing_is_dropped(dense_llm):
    evf_llm = convert_dense_to_evf(dense_llm, _evf_config(strategy="img_gbpr", combine="unit", capacity_factor=1.0))
    evf_llm.set_train(True)  # the training capacity (1.0) is the one under test
    seq = 48  # 96 token rows and 48 slots per expert: whole matmul blocks on every CPU (module doc)
    rng = np.random.default_rng(5)
    ids = rng.integers(3, CONFIG.vocab_size, (BATCH, seq)).astype(np.int32)
    mask = np.ones((BATCH, seq), np.int32)
    mask[1, :3] = 0
    is_image = np.zeros((BATCH, seq), bool)
    is_image[:, 4:28] = True  # 48 image tokens -> vision; 45 real text tokens -> language
    noise = np.random.default_rng(2).random((2, BATCH, seq)).astype(np.float32)
    logits, _, _, _, stats = _forward(evf_llm, ids, mask, is_image, noise)
    stats = stats.asnumpy()
    assert stats.shape == (2, NUM_ROUTING_STATS)
    # capacity 48: nothing dropped; the 48 image tokens all in the vision expert
    np.testing.assert_array_equal(stats, np.tile([93, 45, 48, 0, 0, 48, 0, 48, 0, 0], (2, 1)))
    real = mask.astype(bool)  # padding positions get no FFN output in an EVF layer: compare real tokens
    dense_logits = _forward(dense_llm, ids, mask)[0].asnumpy()
    np.testing.assert_array_equal(logits.asnumpy()[real].view(np.uint32), dense_logits[real].view(np.uint32))


def test_aux_loss_is_the_sum_of_each_evf_layers_paper_aux_loss(dense_llm):
    evf_llm = convert_dense_to_evf(dense_llm, _evf_config(capacity_factor=0.5, min_capacity=0), router_init_std=0.5)
    evf_llm.set_train(True)  # the training capacity factor applies
    captured = []

    def keep(cell, inputs, outputs):
        captured.append(([a.asnumpy() for a in inputs], cell.router.weight.asnumpy(), outputs[1].asnumpy()))

    handles = [evf_llm.model.layers[i].mlp.register_forward_hook(keep) for i in evf_llm.model.evf_layer_indices]
    ids, mask, is_image, _ = _batch(seed=3)
    noise = np.random.default_rng(4).random((2, BATCH, SEQ)).astype(np.float32)
    _, _, _, aux, stats = _forward(evf_llm, ids, mask, is_image, noise)
    for handle in handles:
        handle.remove()
    assert len(captured) == 2
    expected = 0.0
    for layer_index, ((x, image, valid, layer_noise), router, layer_aux) in enumerate(captured):
        tokens = x.reshape(-1, CONFIG.hidden_size).astype(np.float64)
        logits = tokens @ router.T.astype(np.float64)
        probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
        alloc = allocate_reference(probs, image.reshape(-1), valid.reshape(-1), layer_noise.reshape(-1),
                                   strategy="img_gbpr", capacity_factor=0.5, min_capacity=0)
        np.testing.assert_array_equal(stats.asnumpy()[layer_index, 1:3], alloc["kept"])
        layer_reference = aux_loss_reference(probs, alloc["expert"], valid.reshape(-1))
        assert float(layer_aux) == pytest.approx(layer_reference, abs=1e-6)
        expected += layer_reference
    assert stats.asnumpy()[:, 3].sum() > 0  # capacity 8 of 32 slots: the routing really competes
    assert float(aux.asnumpy()) == pytest.approx(expected, abs=2e-6)


def test_stage3_freezing_trains_only_vision_ffns_and_routers(dense_llm):
    evf_config = _evf_config(capacity_factor=1.0)
    evf_llm = convert_dense_to_evf(dense_llm, evf_config)
    trainable = freeze_for_stage3(evf_llm)
    expected_names = {f"model.layers.{i}.mlp.{part}" for i in (0, 2) for part in (
        "vision_ffn.gate_proj.weight", "vision_ffn.up_proj.weight", "vision_ffn.down_proj.weight", "router.weight")}
    assert set(trainable) == expected_names
    ids, mask, is_image, labels = _batch(seed=5)
    noise = ms.Tensor(np.random.default_rng(6).random((2, BATCH, SEQ)).astype(np.float32))
    alpha = evf_config.aux_loss_alpha

    def total_loss(ids, mask, is_image, noise, labels):
        _, loss_sum, num_targets, aux, _ = evf_llm.forward_embeds(evf_llm.embed(ids), mask, is_image, noise, labels)
        return loss_sum / num_targets + alpha * aux

    params = evf_llm.trainable_params()
    grad_fn = ms.value_and_grad(total_loss, grad_position=None, weights=params)
    loss, grads = grad_fn(*(ms.Tensor(a) for a in (ids, mask, is_image)), noise, ms.Tensor(labels))
    assert {p.name for p in params} == expected_names and len(grads) == len(params)
    for param, grad in zip(params, grads):
        assert grad.shape == param.shape
        assert np.abs(grad.asnumpy()).max() > 0, f"no gradient reaches {param.name}"
    assert np.isfinite(float(loss.asnumpy()))

    moe_names = freeze_for_stage3(evf_llm, train_language_ffn=True)
    assert len(moe_names) == 14 and any("language_ffn" in n for n in moe_names)
    assert all(isinstance(evf_llm.model.layers[i].mlp, EVFLayer) for i in (0, 2))


def test_series_ffn_model_keeps_language_only_logits_bit_identical_and_trains_its_vision_copies():
    """PanGu-pi Pro's layers (series FFN below the split, SwiGLU + attention shortcut above): each vision
    expert is a copy of its layer's own FFN kind, and the language-only path is the dense model bit for bit."""
    config = LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=4, num_heads=4,
                       num_kv_heads=2, ffn_below_split="series", attn_shortcut_width=8, layer_split=2,
                       attention_bias=True)
    ms.set_seed(1)
    dense = LLM(config)
    evf_llm = convert_dense_to_evf(dense, _evf_config(layers="all"))
    kinds = [(evf_llm.model.layers[i].mlp.language_ffn.kind, evf_llm.model.layers[i].mlp.vision_ffn.kind)
             for i in range(4)]
    assert kinds == [("series", "series")] * 2 + [("swiglu", "swiglu")] * 2
    np.testing.assert_array_equal(evf_llm.model.layers[1].mlp.vision_ffn.gate_proj2.weight.asnumpy(),
                                  dense.model.layers[1].mlp.gate_proj2.weight.asnumpy())
    evf_llm.set_evf_mode("language_only")
    ids, mask, is_image, _ = _batch(seed=7)
    noise = np.random.default_rng(8).random((4, BATCH, SEQ)).astype(np.float32)
    logits = _forward(evf_llm, ids, mask, is_image, noise)[0].asnumpy()
    np.testing.assert_array_equal(logits.view(np.uint32), _forward(dense, ids, mask)[0].asnumpy().view(np.uint32))
    trainable = freeze_for_stage3(evf_llm)
    assert {n for n in trainable if "gate_proj2" in n} == {f"model.layers.{i}.mlp.vision_ffn.gate_proj2.weight"
                                                           for i in (0, 1)}
    assert not any("attn_linear" in n for n in trainable)
