"""The MindSpore LLM on its own: sizes, rotary tables (against Hugging Face's), loss, cache, layer layout.

Parity of whole models with Hugging Face Llama lives in tests/convert/test_hf_llm.py.
"""
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from eve_ms.config import ConfigError, EVFConfig, LLMConfig
from eve_ms.models.llm import LLM, causal_lm_loss, llm_param_count
from eve_ms.models.rope import rope_tables


def tiny_config(**overrides) -> LLMConfig:
    fields = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                  num_kv_heads=2, max_position_embeddings=32, rms_norm_eps=1e-5)
    fields.update(overrides)
    return LLMConfig(**fields)


def randomize(llm: LLM, seed: int = 0) -> None:
    """Weights of order-one effect (init values would leave the shortcut at zero and norms at one)."""
    rng = np.random.default_rng(seed)
    for param in llm.get_parameters():
        scale = 1.0 / np.sqrt(param.shape[-1]) if len(param.shape) == 2 else 0.1
        base = 1.0 if param.name.endswith("layernorm.weight") or param.name == "model.norm.weight" else 0.0
        param.set_data(Tensor((base + scale * rng.standard_normal(param.shape)).astype(np.float32)))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"num_kv_heads": None, "tie_word_embeddings": True},
        {"attention_bias": True, "mlp_bias": True, "head_dim": 12},
        {"num_layers": 3, "layer_split": 2, "ffn_below_split": "series", "attn_shortcut_width": 8,
         "attention_bias": True, "num_kv_heads": 1},
    ],
    ids=["gqa", "tied", "bias_head_dim", "pangu_layout"],
)
def test_param_count_equals_instantiated_model(overrides):
    config = tiny_config(**overrides)
    llm = LLM(config)
    assert llm_param_count(config) == sum(int(np.prod(p.shape)) for p in llm.get_parameters())


ROPE_VARIANTS = {
    "default_theta": dict(rope_theta=500.0),
    "linear": dict(rope_scaling={"type": "linear", "factor": 2.0}),
    "dynamic": dict(rope_scaling={"rope_type": "dynamic", "factor": 3.0}),
    "llama3": dict(
        rope_theta=100.0,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32},
    ),
    "yarn": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
    "head_dim": dict(head_dim=12),
}


@pytest.mark.parametrize("variant", sorted(ROPE_VARIANTS))
def test_rope_tables_match_hugging_face_rotary_embedding(variant):
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    fields = dict(ROPE_VARIANTS[variant])
    config = tiny_config(max_position_embeddings=64, **fields)
    hf = LlamaConfig(hidden_size=32, num_attention_heads=4, max_position_embeddings=64, head_dim=config.dim_per_head,
                     rope_theta=config.rope_theta, rope_scaling=config.rope_scaling)
    positions = torch.arange(64)[None]
    cos_ref, sin_ref = LlamaRotaryEmbedding(hf)(torch.zeros(1, dtype=torch.float32), positions)
    cos, sin = rope_tables(config)
    np.testing.assert_allclose(cos, cos_ref[0].numpy(), atol=2e-6)
    np.testing.assert_allclose(sin, sin_ref[0].numpy(), atol=2e-6)


def test_unsupported_rope_type_is_a_clear_error():
    with pytest.raises(ConfigError, match="longrope"):
        LLM(tiny_config(rope_scaling={"rope_type": "longrope", "factor": 2.0}))
    with pytest.raises(ConfigError, match="low_freq_factor"):
        LLM(tiny_config(rope_scaling={"rope_type": "llama3", "factor": 2.0}))


def test_loss_sums_token_cross_entropy_over_non_ignored_shifted_labels(rng):
    logits = rng.standard_normal((2, 5, 7)).astype(np.float32)
    labels = np.array([[3, -100, 1, 6, 0], [-100, 2, 2, -100, 5]], np.int32)
    loss_sum, count = causal_lm_loss(Tensor(logits), Tensor(labels))

    shifted_logits, targets = logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1)
    log_probs = shifted_logits - np.log(np.exp(shifted_logits).sum(-1, keepdims=True))
    kept = targets != -100
    expected = -log_probs[np.arange(len(targets))[kept], targets[kept]].sum()
    assert count.asnumpy() == kept.sum() == 6
    np.testing.assert_allclose(loss_sum.asnumpy(), expected, rtol=1e-5)


PANGU = dict(ffn_below_split="series", ffn_from_split="swiglu", attn_shortcut_width=8)


def _layout(llm):
    return [(layer.mlp.kind, layer.has_attn_shortcut) for layer in llm.model.layers]


def test_layers_follow_the_release_split_rule_unless_the_config_sets_the_split():
    llm = LLM(tiny_config(num_layers=12, hidden_size=16, intermediate_size=8, num_heads=2, num_kv_heads=1, **PANGU))
    assert _layout(llm) == [("series", False)] * 8 + [("swiglu", True)] * 4  # the release: 12 layers split at 8
    assert hasattr(llm.model.layers[7].mlp, "gate_proj2") and not hasattr(llm.model.layers[8].mlp, "gate_proj2")
    assert tuple(llm.model.layers[8].attn_linear.in_proj.weight.shape) == (8, 16)
    explicit = LLM(tiny_config(num_layers=3, layer_split=1, **PANGU))
    assert _layout(explicit) == [("series", False), ("swiglu", True), ("swiglu", True)]
    assert _layout(LLM(tiny_config(num_layers=3))) == [("swiglu", False)] * 3  # a Llama: no split needed


def test_a_mixed_layout_at_a_depth_the_release_has_no_split_for_needs_layer_split():
    with pytest.raises(ConfigError, match="no split for 5 layers.*set llm.layer_split"):
        tiny_config(num_layers=5, **PANGU)
    with pytest.raises(ConfigError, match="layer_split=7 is outside 0..5"):
        tiny_config(num_layers=5, layer_split=7, **PANGU)
    with pytest.raises(ConfigError, match="ffn_from_split must be one of"):
        tiny_config(ffn_from_split="geglu")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_attention_shortcut_adds_a_fast_gelu_bottleneck_of_the_attention_output(rng):
    config = tiny_config(num_layers=1, layer_split=0, attn_shortcut_width=8)
    llm = LLM(config)
    randomize(llm)
    layer, decoder = llm.model.layers[0], llm.model
    b, s = 2, 5
    x = rng.standard_normal((b, s, config.hidden_size)).astype(np.float32)
    positions = Tensor(np.tile(np.arange(s, dtype=np.int32), (b, 1)))
    cos = ms.ops.gather(decoder.rope_cos, positions, 0).reshape(b, 1, s, -1)
    sin = ms.ops.gather(decoder.rope_sin, positions, 0).reshape(b, 1, s, -1)
    mask_bias = Tensor(np.where(np.tril(np.ones((s, s), bool)), 0.0, np.finfo(np.float32).min)
                       .astype(np.float32).reshape(1, 1, s, s))
    out = layer(Tensor(x), cos, sin, mask_bias, None, None, None)[0].asnumpy()
    attn = layer.self_attn(layer.input_layernorm(Tensor(x)), cos, sin, mask_bias)[0].asnumpy().astype(np.float64)

    w_in = layer.attn_linear.in_proj.weight.asnumpy().astype(np.float64)
    w_out = layer.attn_linear.out_proj.weight.asnumpy().astype(np.float64)
    z = attn @ w_in.T
    h = x + attn + (z * _sigmoid(1.702 * z)) @ w_out.T
    normed = h / np.sqrt((h * h).mean(-1, keepdims=True) + config.rms_norm_eps)
    normed *= layer.post_attention_layernorm.weight.asnumpy()
    w = {n: p.asnumpy().astype(np.float64) for n, p in layer.mlp.parameters_and_names()}
    gate = normed @ w["gate_proj.weight"].T
    ffn = (gate * _sigmoid(gate) * (normed @ w["up_proj.weight"].T)) @ w["down_proj.weight"].T
    np.testing.assert_allclose(out, h + ffn, atol=1e-4)
    assert np.abs((z * _sigmoid(1.702 * z)) @ w_out.T).mean() > 0.05  # the shortcut visibly matters


@pytest.mark.parametrize("layout", [{}, dict(PANGU, layer_split=1)], ids=["llama", "pangu"])
def test_chunked_prefill_and_decode_steps_equal_the_full_forward(rng, layout):
    """Writing the cache at a nonzero cache_position (several tokens at once, then one) changes nothing."""
    config = tiny_config(tie_word_embeddings=True, **layout)
    llm = LLM(config)
    randomize(llm)
    ids = rng.integers(0, config.vocab_size, (2, 8)).astype(np.int32)
    mask = np.ones((2, 8), np.int32)
    mask[1, :3] = 0  # left padding in the second sample
    full = llm(Tensor(ids), Tensor(mask)).asnumpy()

    keys, values = llm.init_cache(2, 10)
    cache_mask = np.zeros((2, 10), np.int32)
    steps = []
    for start, stop in [(0, 4), (4, 7), (7, 8)]:
        cache_mask[:, start:stop] = mask[:, start:stop]
        logits, keys, values = llm.forward_step(
            llm.embed(Tensor(ids[:, start:stop])), Tensor(cache_mask), Tensor(start, ms.int32), keys, values
        )
        steps.append(logits.asnumpy())
    stepped = np.concatenate(steps, axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(stepped[real], full[real], atol=1e-5)


def test_dense_model_never_imports_the_evf_layer(monkeypatch, rng):
    monkeypatch.setitem(sys.modules, "eve_ms.models.evf", None)  # any import of it now fails
    llm = LLM(tiny_config(), EVFConfig(enabled=False))
    ids = Tensor(rng.integers(0, 61, (1, 4)).astype(np.int32))
    logits, loss_sum, count, aux_loss, stats = llm.forward_embeds(llm.embed(ids), labels=ids)
    assert logits.shape == (1, 4, 61)
    assert count.asnumpy() == 3 and loss_sum.asnumpy() > 0
    assert aux_loss.asnumpy() == 0 and stats.shape == (0, 0)


def _evf_copy_of(dense: LLM, evf_config: EVFConfig) -> LLM:
    """An EVF model whose language and vision FFNs are copies of `dense`'s FFNs (stage-3 initialisation)."""
    evf = LLM(dense.config, evf_config)
    evf_params = dict(evf.parameters_and_names())
    for name, param in dense.parameters_and_names():
        if ".mlp." in name and name not in evf_params:
            for expert in ("language_ffn", "vision_ffn"):
                evf_params[name.replace(".mlp.", f".mlp.{expert}.")].set_data(param.value())
        else:
            evf_params[name].set_data(param.value())
    return evf


def test_evf_model_in_language_only_mode_equals_the_dense_model(rng):
    dense = LLM(tiny_config())
    randomize(dense)
    evf = _evf_copy_of(dense, EVFConfig(enabled=True, layers="all"))
    assert evf.num_evf_layers == 2
    evf.set_evf_mode("language_only")
    ids = Tensor(rng.integers(0, 61, (2, 6)).astype(np.int32))
    mask = Tensor(np.array([[1] * 6, [0, 0, 1, 1, 1, 1]], np.int32))
    is_image = Tensor(rng.random((2, 6)) < 0.5)
    logits, _, _, aux_loss, _ = evf.forward_embeds(evf.embed(ids), mask, is_image)
    np.testing.assert_array_equal(logits.asnumpy(), dense(ids, mask).asnumpy())
    assert aux_loss.asnumpy() == 0


def test_evf_layers_receive_modality_mask_valid_tokens_and_their_noise(rng):
    """img_gbpr with a strong prior sends image tokens to the vision FFN; padding is not valid."""
    dense = LLM(tiny_config())
    randomize(dense)
    evf = _evf_copy_of(dense, EVFConfig(enabled=True, layers="all", strategy="img_gbpr", beta=100.0,
                                        capacity_factor=2.0))
    from eve_ms.models.evf import NUM_ROUTING_STATS, ROUTING_STAT_NAMES

    ids = Tensor(rng.integers(0, 61, (2, 6)).astype(np.int32))
    mask = np.array([[1] * 6, [0, 0, 1, 1, 1, 1]], np.int32)
    is_image = np.zeros((2, 6), bool)
    is_image[:, 1:4] = True  # 3 image tokens per row, one of them padding in row 1
    noise = Tensor(rng.random((2, 2, 6)).astype(np.float32))
    embeds = evf.embed(ids)
    logits, loss_sum, count, aux_loss, stats = evf.forward_embeds(
        embeds, Tensor(mask), Tensor(is_image), noise, labels=ids
    )
    stats = dict(zip(ROUTING_STAT_NAMES, stats.asnumpy().T))
    assert len(ROUTING_STAT_NAMES) == NUM_ROUTING_STATS
    np.testing.assert_array_equal(stats["valid"], [10, 10])
    np.testing.assert_array_equal(stats["kept_vision"], [5, 5])
    np.testing.assert_array_equal(stats["kept_language"], [5, 5])
    assert aux_loss.asnumpy() > 0 and count.asnumpy() == 10
    # nothing is dropped and both FFNs are copies: the dense model's outputs on real tokens (combine: unit)
    real = mask.astype(bool)
    np.testing.assert_allclose(logits.asnumpy()[real], dense(ids, Tensor(mask)).asnumpy()[real], atol=1e-5)
