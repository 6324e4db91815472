"""The EVF layer: modes, dispatch, combine, aux loss and router gradients against numpy recomputations.

Bit-exact comparisons with the dense FFN assume the matmul kernel gives a row the same result
whatever the number of rows in the call. MindSpore's CPU GEMM computes rows in blocks whose size
depends on the CPU (6 rows with AVX2, 16 with AVX-512) and rounds the rows of a partial block
differently, so those tests use row counts (B*S and the expert capacity) that are multiples of 48.
"""
import mindspore as ms
import numpy as np
import pytest

from eve_ms.config import ConfigError, EVFConfig, LLMConfig
from eve_ms.models.evf import NUM_ROUTING_STATS, ROUTING_STAT_NAMES, EVFLayer
from eve_ms.models.ffn import FeedForward
from eve_ms.ops.token_allocation import allocate_reference, aux_loss_reference

HIDDEN = 32
SEED = 2  # inputs whose allocation drops tokens under every strategy and redistributes under img_gbpr
LLM = LLMConfig(vocab_size=64, hidden_size=HIDDEN, intermediate_size=48, num_layers=1, num_heads=2)


def _evf_config(**overrides):
    return EVFConfig(**{"enabled": True, "kernel": "composed", **overrides})


def _layer(router_seed=0, **overrides):
    """An EVF layer whose router weights come from a seeded numpy generator (reproducible routing)."""
    layer = EVFLayer(LLM, _evf_config(**overrides))
    weight = np.random.default_rng(router_seed).normal(0, 0.3, (2, HIDDEN)).astype(np.float32)
    layer.router.weight.set_data(ms.Tensor(weight))
    return layer


def _copy_ffn(source, target):
    for (_, src), (_, dst) in zip(source.parameters_and_names(), target.parameters_and_names()):
        dst.set_data(ms.Tensor(src.asnumpy().copy()))


def _ffn_numpy(ffn, x):
    gate = x @ ffn.gate_proj.weight.asnumpy().T
    up = x @ ffn.up_proj.weight.asnumpy().T
    return (gate / (1 + np.exp(-gate)) * up) @ ffn.down_proj.weight.asnumpy().T


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _inputs(batch, seq, image_fraction=0.5, valid_fraction=1.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (batch, seq, HIDDEN)).astype(np.float32)
    is_image = rng.random((batch, seq)) < image_fraction
    valid = rng.random((batch, seq)) < valid_fraction
    noise = rng.random((batch, seq)).astype(np.float32)
    return x, is_image, valid, noise


def _call(layer, x, is_image, valid, noise):
    y, aux, stats = layer(ms.Tensor(x), ms.Tensor(is_image), ms.Tensor(valid), ms.Tensor(noise))
    return y.asnumpy(), float(aux.asnumpy()), stats.asnumpy()


def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def test_language_only_is_bit_identical_to_the_dense_ffn(any_mode):
    layer = EVFLayer(LLM, _evf_config(mode="language_only"))
    dense = FeedForward(LLM)
    _copy_ffn(layer.language_ffn, dense)
    x, is_image, valid, noise = _inputs(2, 5, valid_fraction=0.7)
    y, aux, stats = _call(layer, x, is_image, valid, noise)
    np.testing.assert_array_equal(_bits(y), _bits(dense(ms.Tensor(x)).asnumpy()))
    assert aux == 0.0
    assert stats.shape == (NUM_ROUTING_STATS,) and len(ROUTING_STAT_NAMES) == NUM_ROUTING_STATS
    np.testing.assert_array_equal(stats, [valid.sum(), valid.sum(), 0, 0, 0])


def test_multimodal_unit_combine_equals_the_dense_ffn_when_nothing_is_dropped(any_mode):
    """Stage 3 at initialisation: both FFNs copies of the dense one give exactly its output."""
    # a decisive router, which the modality prior overrides for many tokens (P[x, expert] < 0.5)
    layer = _layer(strategy="img_gbpr", capacity_factor=1.0, combine="unit")
    dense = FeedForward(LLM)
    _copy_ffn(dense, layer.language_ffn)
    _copy_ffn(dense, layer.vision_ffn)
    x, _, valid, noise = _inputs(2, 48)
    is_image = np.zeros((2, 48), bool)
    is_image[0, 3:33], is_image[1, :18] = True, True  # 48 of 96 tokens: each expert fills its 48 slots exactly
    assert layer.capacity(96) == 48  # row counts (96 dense, 48 per expert) in full matmul blocks: see module doc
    y, _, stats = _call(layer, x, is_image, valid, noise)
    np.testing.assert_array_equal(stats, [96, 48, 48, 0, 0])
    np.testing.assert_array_equal(_bits(y), _bits(dense(ms.Tensor(x)).asnumpy()))


def _recompute(layer, x, is_image, valid, noise, strategy, combine):
    """The EVF layer forward in numpy: router, reference allocation, per-token expert FFN, combine."""
    tokens = x.reshape(-1, HIDDEN)
    probs = _softmax(tokens.astype(np.float64) @ layer.router.weight.asnumpy().T.astype(np.float64))
    probs = probs.astype(np.float32)
    alloc = allocate_reference(probs, is_image.reshape(-1), valid.reshape(-1), noise.reshape(-1),
                               strategy=strategy, capacity_factor=layer.capacity_factor,
                               min_capacity=layer.min_capacity, beta=layer.beta,
                               redistribute_ratio=layer.redistribute_ratio)
    outputs = [_ffn_numpy(layer.language_ffn, tokens), _ffn_numpy(layer.vision_ffn, tokens)]
    y = np.zeros_like(tokens)
    for t, e in enumerate(alloc["expert"]):
        if e >= 0:
            y[t] = outputs[e][t] * (probs[t, e] if combine == "prob" else 1.0)
    return y.reshape(x.shape), probs, alloc


@pytest.mark.parametrize("mode, strategy, combine", [
    ("multimodal", "img_gbpr", "unit"),
    ("multimodal", "img_gbpr", "prob"),
    ("multimodal", "gbpr", "unit"),
    ("multimodal", "random", "prob"),
    ("moe", "gbpr", "prob"),  # moe routes like gbpr whatever evf.strategy says
])
def test_dispatch_and_combine_equal_a_numpy_recomputation(mode, strategy, combine):
    layer = _layer(mode=mode, strategy="img_gbpr" if mode == "moe" else strategy, combine=combine,
                   capacity_factor=0.75, min_capacity=2, beta=0.6, redistribute_ratio=0.7)
    x, is_image, valid, noise = _inputs(3, 8, image_fraction=0.7, valid_fraction=0.8, seed=SEED)
    y, aux, stats = _call(layer, x, is_image, valid, noise)
    expected, probs, alloc = _recompute(layer, x, is_image, valid, noise, strategy, combine)
    np.testing.assert_array_equal(stats, [valid.sum(), *alloc["kept"], alloc["dropped"], alloc["redistributed"]])
    assert alloc["dropped"] > 0  # the case exercises overflow
    if strategy == "img_gbpr":
        assert alloc["redistributed"] > 0
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    dropped_or_padding = (alloc["expert"] == -1).reshape(valid.shape)
    assert np.all(y[dropped_or_padding] == 0)  # only the residual carries them
    assert aux == pytest.approx(aux_loss_reference(probs, alloc["expert"], valid.reshape(-1)), abs=1e-6)


def test_aux_loss_is_the_paper_formula_on_a_case_worked_by_hand():
    layer = EVFLayer(LLM, _evf_config(mode="moe", capacity_factor=2.0))
    weight = np.zeros((2, HIDDEN), np.float32)
    weight[1, 0] = 1.0  # logits = (0, x0): P(vision) = sigmoid(x0)
    layer.router.weight.set_data(ms.Tensor(weight))
    p_vision = np.array([0.9, 0.6, 0.2, 0.3])
    x = np.zeros((1, 4, HIDDEN), np.float32)
    x[0, :, 0] = np.log(p_vision / (1 - p_vision))
    valid = np.array([[True, True, True, False]])
    _, aux, stats = _call(layer, x, np.zeros((1, 4), bool), valid, np.zeros((1, 4), np.float32))
    # experts (1, 1, 0, padding): F = (1/3, 2/3); G = (mean(.1, .4, .8), mean(.9, .6, .2)) = (1.3/3, 1.7/3)
    np.testing.assert_array_equal(stats, [3, 1, 2, 0, 0])
    assert aux == pytest.approx((1 / 3) * (1.3 / 3) + (2 / 3) * (1.7 / 3), abs=1e-6)


def test_unit_combine_sends_the_routing_gradient_to_the_router(any_mode):
    """d(sum(y * g) + aux)/d router = straight-through gradient of P[x, expert] plus the aux loss's."""
    layer = _layer(strategy="img_gbpr", combine="unit", capacity_factor=0.75, min_capacity=0)
    x, is_image, valid, noise = _inputs(2, 8, valid_fraction=0.85, seed=5)  # 4 dropped, 2 redistributed
    g = np.random.default_rng(3).normal(0, 1, x.shape).astype(np.float32)

    def loss_fn(x, is_image, valid, noise, g):
        y, aux, _ = layer(x, is_image, valid, noise)
        return (y * g).sum() + aux

    grad_fn = ms.grad(loss_fn, grad_position=None, weights=layer.router.trainable_params())
    (router_grad,) = grad_fn(*(ms.Tensor(a) for a in (x, is_image, valid, noise, g)))

    _, probs, alloc = _recompute(layer, x, is_image, valid, noise, "img_gbpr", "unit")
    tokens, expert = x.reshape(-1, HIDDEN).astype(np.float64), alloc["expert"]
    outputs = [_ffn_numpy(layer.language_ffn, tokens), _ffn_numpy(layer.vision_ffn, tokens)]
    mask = valid.reshape(-1)
    n = mask.sum()
    grad_probs = np.zeros((len(expert), 2))
    for t, e in enumerate(expert):
        if e >= 0:
            grad_probs[t, e] += np.sum(g.reshape(-1, HIDDEN)[t] * outputs[e][t])  # d/dP of out * P
    fractions = np.array([np.sum(expert == e) for e in range(2)]) / n
    grad_probs[mask] += fractions / n  # d aux / d P[x, e] = F_e / n for valid tokens
    grad_logits = probs * (grad_probs - np.sum(probs * grad_probs, 1, keepdims=True))
    expected = grad_logits.T @ tokens
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(router_grad.asnumpy(), expected, rtol=1e-4, atol=1e-5)


def test_prob_combine_weights_kept_outputs_and_zeroes_dropped_ones():
    layer = _layer(strategy="gbpr", combine="prob", capacity_factor=0.25, min_capacity=0)
    x, is_image, valid, noise = _inputs(2, 16, seed=7)
    y, _, stats = _call(layer, x, is_image, valid, noise)
    expected, probs, alloc = _recompute(layer, x, is_image, valid, noise, "gbpr", "prob")
    assert stats[3] == 24  # capacity 4 per expert: 24 of 32 tokens dropped
    kept = alloc["expert"] >= 0
    tokens = x.reshape(-1, HIDDEN)
    for t in np.flatnonzero(kept):
        e = alloc["expert"][t]
        ffn = layer.vision_ffn if e == 1 else layer.language_ffn
        np.testing.assert_allclose(y.reshape(-1, HIDDEN)[t], probs[t, e] * _ffn_numpy(ffn, tokens[t]), rtol=1e-5,
                                   atol=1e-6)
    assert np.all(y.reshape(-1, HIDDEN)[~kept] == 0)


def test_native_kernel_backend_gives_the_same_layer_output(any_mode):
    composed = EVFLayer(LLM, _evf_config(capacity_factor=0.75, redistribute_ratio=0.8))
    native = EVFLayer(LLM, _evf_config(kernel="custom", capacity_factor=0.75, redistribute_ratio=0.8))
    assert composed.backend == "composed" and native.backend == "cpu"
    ms.load_param_into_net(native, {p.name: p for p in composed.get_parameters()})
    for batch, seq in ((2, 8), (3, 5)):  # a kernel per token count, built at the first call with it
        args = _inputs(batch, seq, image_fraction=0.6, valid_fraction=0.9, seed=4)
        for a, b in zip(_call(composed, *args), _call(native, *args)):
            np.testing.assert_array_equal(a, b)


def test_bad_modes_and_config_values_are_errors():
    layer = EVFLayer(LLM, _evf_config())
    with pytest.raises(ValueError, match="mode"):
        layer.set_mode("vision_only")
    for key, value in (("mode", "dense"), ("combine", "sum"), ("strategy", "top2"), ("capacity_factor", 0.0)):
        with pytest.raises(ConfigError, match=key):
            EVFLayer(LLM, _evf_config(**{key: value}))
