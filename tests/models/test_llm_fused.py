"""The LLM's fused paths (llm.fused_ops), run on CPU with numpy stand-ins for the Ascend operators.

The stand-ins compute what MindSpore 2.9 documents for each operator and check the arguments it
documents as valid (layout, mask dtype and meaning, cos/sin layouts, head counts), so a wrong
layout, mask, scale or head mapping in the model's fused calls fails here. The composed path with
the same weights is the reference on real tokens. `off` versus `auto` on CPU: exactly the same
composed computation (both are also checked against Hugging Face in tests/convert).
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops

from eve_ms.config import EVFConfig
from eve_ms.inference.generate import greedy_generate
from eve_ms.models import llm as llm_module
from eve_ms.models.llm import LLM, Attention, LLMDecodeStep
from eve_ms.ops.fused import COMPOSED, FusedOps
from test_llm import randomize, tiny_config

ALL_ON = FusedOps(attention=True, rotary=True, rms_norm=True, swiglu=True)


def _np(x):
    return x.asnumpy().astype(np.float64)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


class StandIns:
    """numpy versions of the fused operators, from their MindSpore 2.9 docs; `calls` counts each."""

    def __init__(self):
        self.calls = {name: 0 for name in ("flash_attention_score", "rotary_position_embedding", "rms_norm",
                                           "swiglu")}

    def flash_attention_score(self, query, key, value, head_num, real_shift=None, drop_mask=None, padding_mask=None,
                              attn_mask=None, prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None, keep_prob=1.0,
                              scalar_value=1.0, pre_tokens=2147483647, next_tokens=2147483647, inner_precise=0,
                              input_layout="BSH", sparse_mode=0):
        self.calls["flash_attention_score"] += 1
        assert input_layout == "BSND" and sparse_mode == 0 and keep_prob == 1.0 and drop_mask is None
        assert attn_mask.dtype in (ms.uint8, ms.bool_)
        q, k, v = _np(query), _np(key), _np(value)  # [B, S, N, D]
        b, s1, n1, d = q.shape
        n2 = k.shape[2]
        assert n1 == head_num and n1 % n2 == 0 and k.shape == v.shape and k.shape[3] == d
        mask = attn_mask.asnumpy().astype(bool)  # 1 / True = discard
        assert mask.shape in ((b, 1, s1, k.shape[1]), (b, n1, s1, k.shape[1]))
        assert not mask.all(-1).any(), "a query row with every key masked (the operator does not define it)"
        # query head j reads kv head j // (n1 / n2): the grouping of grouped-query attention
        k = np.repeat(k, n1 // n2, axis=2)
        v = np.repeat(v, n1 // n2, axis=2)
        scores = np.einsum("bind,bjnd->bnij", q, k) * scalar_value
        scores = np.where(mask, -np.inf, scores)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out = np.einsum("bnij,bjnd->bind", probs, v)
        return Tensor(out.astype(np.float32)).astype(query.dtype)

    def rotary_position_embedding(self, x, cos, sin, mode=0):
        self.calls["rotary_position_embedding"] += 1
        assert mode == 0 and x.ndim == 4 and cos.dtype == sin.dtype == x.dtype
        b, s, n, d = x.shape  # BSND: the documented cos/sin layouts are 1S1D, BS1D, BSND
        assert cos.shape in ((1, s, 1, d), (b, s, 1, d), (b, s, n, d)) and sin.shape == cos.shape
        xs, c, sn = _np(x), _np(cos), _np(sin)
        rotated = np.concatenate([-xs[..., d // 2:], xs[..., :d // 2]], -1)
        return Tensor((xs * c + rotated * sn).astype(np.float32)).astype(x.dtype)

    def rms_norm(self, x, gamma, epsilon=1e-6):
        self.calls["rms_norm"] += 1
        assert x.dtype == gamma.dtype and 0 < epsilon <= 1
        xs = _np(x)
        rstd = 1 / np.sqrt((xs * xs).mean(-1, keepdims=True) + epsilon)
        return Tensor((xs * rstd * _np(gamma)).astype(np.float32)).astype(x.dtype), Tensor(rstd.astype(np.float32))

    def swiglu(self, input, dim=-1):  # noqa: A002 (the operator's argument name)
        self.calls["swiglu"] += 1
        a, b = np.split(_np(input), 2, axis=dim)
        return Tensor((a * _sigmoid(a) * b).astype(np.float32)).astype(input.dtype)


@pytest.fixture
def stand_ins(monkeypatch):
    """The fused operators replaced by numpy stand-ins, every flag on, the fused attention allowed in float32."""
    fake = StandIns()
    for name in fake.calls:
        monkeypatch.setattr(ops, name, getattr(fake, name))
    monkeypatch.setattr(Attention, "flash_in_float32", True)
    selections = {"fused": ALL_ON}
    monkeypatch.setattr(llm_module, "select_fused_ops", lambda config: selections["fused"])
    fake.selections = selections
    return fake


LAYOUTS = {
    "llama-gqa": (dict(hidden_size=64, num_heads=4, num_kv_heads=2), None),
    "pangu-series-shortcut-bias": (dict(hidden_size=64, num_heads=4, num_kv_heads=1, num_layers=3, layer_split=2,
                                        ffn_below_split="series", attn_shortcut_width=8, attention_bias=True), None),
    "evf": (dict(hidden_size=64, num_heads=4, num_kv_heads=4), EVFConfig(enabled=True)),
}


def _twin_models(overrides, evf, selections):
    """The same weights in a composed and a fused build."""
    selections["fused"] = COMPOSED
    composed = LLM(tiny_config(**overrides), evf)
    randomize(composed, 1)
    selections["fused"] = ALL_ON
    fused = LLM(tiny_config(**overrides), evf)
    weights = {p.name: p.asnumpy() for p in composed.get_parameters()}
    for p in fused.get_parameters():
        p.set_data(Tensor(weights[p.name]))
    for model in (composed, fused):
        model.set_train(False)
    return composed, fused


def _batch(rng, length=9):
    ids = rng.integers(0, 61, (3, length)).astype(np.int32)
    mask = np.ones((3, length), np.int32)
    mask[0, :4] = 0  # left padding
    mask[1, -2:] = 0  # right padding
    return ids, mask


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fused_paths_equal_the_composed_path_on_real_tokens(stand_ins, layout, rng):
    overrides, evf = LAYOUTS[layout]
    composed, fused = _twin_models(overrides, evf, stand_ins.selections)
    ids, mask = _batch(rng)
    noise = Tensor(rng.random((composed.num_evf_layers, 3, ids.shape[1])).astype(np.float32)) if evf else None
    outputs = []
    for model in (composed, fused):
        outputs.append(model.forward_embeds(model.embed(Tensor(ids)), Tensor(mask), routing_noise=noise)[0].asnumpy())
    config = tiny_config(**overrides)
    evf_layers = evf.layer_indices(config.num_layers) if evf else []
    swiglu_calls = sum(2 if i in evf_layers else 1  # an EVF layer runs both experts
                       for i in range(config.num_layers) if config.ffn_kind(i) == "swiglu")
    assert stand_ins.calls == {
        "flash_attention_score": config.num_layers,
        "rotary_position_embedding": 2 * config.num_layers,  # queries and keys
        "rms_norm": 2 * config.num_layers + 1,
        "swiglu": swiglu_calls,  # the series FFN has no fused operator
    }
    real = mask.astype(bool)
    np.testing.assert_allclose(outputs[1][real], outputs[0][real], rtol=1e-5, atol=1e-5)


def test_fused_attention_with_the_composed_rotary_formula(stand_ins, rng):
    """What a model outside the rotary operator's constraints (YaRN's scaled tables) runs on Ascend."""
    overrides = dict(LAYOUTS["llama-gqa"][0],
                     rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16})
    stand_ins.selections["fused"] = COMPOSED
    composed = LLM(tiny_config(**overrides))
    randomize(composed, 1)
    stand_ins.selections["fused"] = FusedOps(attention=True)
    fused = LLM(tiny_config(**overrides))
    weights = {p.name: p.asnumpy() for p in composed.get_parameters()}
    for p in fused.get_parameters():
        p.set_data(Tensor(weights[p.name]))
    ids, mask = _batch(rng)
    want, got = (model(Tensor(ids), Tensor(mask)).asnumpy() for model in (composed, fused))
    assert stand_ins.calls["flash_attention_score"] == 2 and stand_ins.calls["rotary_position_embedding"] == 0
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-5)


def test_fused_attention_with_a_scale_that_is_not_ours_fails(stand_ins, rng, monkeypatch):
    composed, fused = _twin_models(LAYOUTS["llama-gqa"][0], None, stand_ins.selections)
    ids, mask = _batch(rng)
    want = composed(Tensor(ids), Tensor(mask)).asnumpy()[mask.astype(bool)]
    for layer in fused.model.layers:
        layer.self_attn.flash_kwargs = dict(layer.self_attn.flash_kwargs, scalar_value=1.0)
    got = fused(Tensor(ids), Tensor(mask)).asnumpy()[mask.astype(bool)]
    assert np.abs(got - want).max() > 1e-3  # the check above would catch a scale that is not ours


def test_cached_prefill_and_decode_steps_keep_the_composed_attention(stand_ins, rng):
    composed, fused = _twin_models(LAYOUTS["llama-gqa"][0], None, stand_ins.selections)
    ids, mask = _batch(rng, 6)
    ids, mask = ids[[0, 2]], mask[[0, 2]]  # left padding, as generation pads prompts
    before = dict(stand_ins.calls)
    tokens = [greedy_generate(LLMDecodeStep(model), ids, mask, 2) for model in (composed, fused)]
    assert stand_ins.calls["flash_attention_score"] == before["flash_attention_score"] == 0
    assert stand_ins.calls["rotary_position_embedding"] == 0
    assert stand_ins.calls["rms_norm"] > 0 and stand_ins.calls["swiglu"] > 0  # the rest stays fused
    np.testing.assert_array_equal(tokens[1], tokens[0])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_off_is_bit_identical_to_auto_on_cpu(layout, rng):
    """On CPU, auto selects the composed ops: both settings build exactly the same computation."""
    overrides, evf = LAYOUTS[layout]
    ids, mask = _batch(rng)
    num_evf = len(evf.layer_indices(tiny_config(**overrides).num_layers)) if evf else 0
    noise = rng.random((num_evf, 3, ids.shape[1])).astype(np.float32)
    logits, losses = [], []
    for setting in ("off", "auto"):
        model = LLM(tiny_config(fused_ops=setting, **overrides), evf)
        assert model.model.fused_ops == COMPOSED
        randomize(model, 1)
        model.set_train(False)
        labels = np.where(mask == 1, ids, -100).astype(np.int32)
        out = model.forward_embeds(model.embed(Tensor(ids)), Tensor(mask), labels=Tensor(labels),
                                   routing_noise=Tensor(noise) if evf else None)
        logits.append(out[0].asnumpy())
        losses.append(out[1].asnumpy())
    np.testing.assert_array_equal(logits[1], logits[0])
    np.testing.assert_array_equal(losses[1], losses[0])


# --------------------------------------------------------------------------- graph mode


def _ms_flash_attention_score(query, key, value, head_num, attn_mask=None, keep_prob=1.0, scalar_value=1.0,
                              pre_tokens=2147483647, next_tokens=2147483647, inner_precise=0, input_layout="BSH",
                              sparse_mode=0):
    """FlashAttentionScore's documented function in MindSpore ops (BSND, 1 = discard), compilable in graph mode."""
    n1, n2 = query.shape[2], key.shape[2]
    k = ops.repeat_interleave(key, n1 // n2, 2)
    v = ops.repeat_interleave(value, n1 // n2, 2)
    q, k, v = ops.transpose(query, (0, 2, 1, 3)), ops.transpose(k, (0, 2, 1, 3)), ops.transpose(v, (0, 2, 1, 3))
    scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * scalar_value
    scores = ops.where(attn_mask.astype(ms.bool_), ops.full((), -1e30, dtype=scores.dtype), scores)
    return ops.transpose(ops.matmul(ops.softmax(scores, -1), v), (0, 2, 1, 3))


def _ms_rotary_position_embedding(x, cos, sin, mode=0):
    half = x.shape[-1] // 2
    return x * cos + ops.cat((-x[..., half:], x[..., :half]), -1) * sin


def _ms_rms_norm(x, gamma, epsilon=1e-6):
    rstd = ops.rsqrt(ops.mean(x * x, -1, keep_dims=True) + epsilon)
    return x * rstd * gamma, rstd


def _ms_swiglu(input, dim=-1):  # noqa: A002
    a, b = ops.split(input, input.shape[dim] // 2, dim)
    return a * ops.sigmoid(a) * b


def test_the_fused_paths_compile_in_graph_mode(monkeypatch, rng):
    selections = _install_ms_stand_ins(monkeypatch)
    composed, fused = _twin_models(LAYOUTS["llama-gqa"][0], None, selections)
    ids, mask = _batch(rng)
    want = composed(Tensor(ids), Tensor(mask)).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        got = fused(Tensor(ids), Tensor(mask)).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-5)


def _install_ms_stand_ins(monkeypatch):
    for name, stand_in in (("flash_attention_score", _ms_flash_attention_score),
                           ("rotary_position_embedding", _ms_rotary_position_embedding),
                           ("rms_norm", _ms_rms_norm), ("swiglu", _ms_swiglu)):
        monkeypatch.setattr(ops, name, stand_in)
    monkeypatch.setattr(Attention, "flash_in_float32", True)
    selections = {"fused": ALL_ON}
    monkeypatch.setattr(llm_module, "select_fused_ops", lambda config: selections["fused"])
    return selections


def test_fused_paths_give_the_composed_gradients(monkeypatch, rng, layout="pangu-series-shortcut-bias"):
    """Targets predicted from real positions only: padding rows, where the two paths differ, reach no gradient.

    (A left-padding position that predicts the first real token would differ: the composed path lets it
    see every key, the fused one only itself. Training batches are right-padded, eve_ms/data/dataset.py.)"""
    selections = _install_ms_stand_ins(monkeypatch)
    composed, fused = _twin_models(LAYOUTS[layout][0], None, selections)
    ids, mask = _batch(rng)
    predicted_from_real = np.concatenate([np.zeros((3, 1), bool), mask[:, :-1] == 1], 1) & (mask == 1)
    labels = np.where(predicted_from_real, ids, -100).astype(np.int32)
    grads = []
    for model in (composed, fused):
        model.set_train(True)
        params = model.trainable_params()

        def loss(embeds, model=model):
            out = model.forward_embeds(embeds, Tensor(mask), labels=Tensor(labels))
            return out[1] / out[2]

        grad_fn = ms.grad(loss, grad_position=None, weights=params)
        grads.append({p.name: g.asnumpy() for p, g in zip(params, grad_fn(model.embed(Tensor(ids))))})
    assert grads[0].keys() == grads[1].keys()
    for name, want in grads[0].items():
        np.testing.assert_allclose(grads[1][name], want, rtol=1e-4, atol=1e-6, err_msg=name)
