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
from eve_ms.models.evf import NUM_ROUTING_STATS, ROUTING_STAT_NAMES, EVFLayer, Router
from eve_ms.models.ffn import FeedForward
from eve_ms.ops.token_allocation import allocate_reference, aux_loss_reference, preference_scores

HIDDEN = 32
SEED = 2  # inputs whose allocation drops tokens under every strategy and redistributes under img_gbpr
LLM = LLMConfig(vocab_size=64, hidden_size=HIDDEN, intermediate_size=48, num_layers=1, num_heads=2)


def _evf_config(**overrides):
    return EVFConfig(**{"enabled": True, "kernel": "composed", **overrides})


def _layer(router_seed=0, training=True, **overrides):
    """An EVF layer whose router weights come from a seeded numpy generator (reproducible routing),
    in training mode unless asked: `capacity_factor` applies then, `eval_capacity_factor` otherwise."""
    layer = EVFLayer(LLM, _evf_config(**overrides))
    weight = np.random.default_rng(router_seed).normal(0, 0.3, (2, HIDDEN)).astype(np.float32)
    layer.router.weight.set_data(ms.Tensor(weight))
    return layer.set_train(training)


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
    image = (is_image & valid).sum()
    np.testing.assert_array_equal(stats, [valid.sum(), valid.sum(), 0, 0, 0, image, image, 0, 0, 0])


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
    np.testing.assert_array_equal(stats, [96, 48, 48, 0, 0, 48, 0, 48, 0, 0])  # every image token in vision
    np.testing.assert_array_equal(_bits(y), _bits(dense(ms.Tensor(x)).asnumpy()))


def _recompute(layer, x, is_image, valid, noise, strategy, combine):
    """The EVF layer forward in numpy: router, reference allocation, per-token expert FFN, combine."""
    tokens = x.reshape(-1, HIDDEN)
    probs = _softmax(tokens.astype(np.float64) @ layer.router.weight.asnumpy().T.astype(np.float64))
    probs = probs.astype(np.float32)
    router = layer.router
    alloc = allocate_reference(probs, is_image.reshape(-1), valid.reshape(-1), noise.reshape(-1),
                               strategy=strategy,
                               capacity_factor=router.capacity_factor if layer.training else router.eval_capacity_factor,
                               min_capacity=router.min_capacity, beta=router.beta,
                               redistribute_ratio=router.redistribute_ratio)
    outputs = [_ffn_numpy(layer.language_ffn, tokens), _ffn_numpy(layer.vision_ffn, tokens)]
    y = np.zeros_like(tokens)
    for t, e in enumerate(alloc["expert"]):
        if e >= 0:
            y[t] = outputs[e][t] * (probs[t, e] if combine == "prob" else 1.0)
    return y.reshape(x.shape), probs, alloc


def _image_counts(probs, alloc, is_image, valid, strategy, beta):
    """valid, kept_language, kept_vision, dropped, redistributed over valid image tokens, from the reference."""
    image = (is_image & valid).reshape(-1)
    expert = alloc["expert"]
    scores = preference_scores(probs, is_image.reshape(-1), strategy, beta)
    preferred = np.argmax(scores, axis=1)
    kept = [int(np.sum(image & (expert == e))) for e in (0, 1)]
    moved = int(np.sum(image & (expert >= 0) & (expert != preferred)))
    return [int(image.sum()), *kept, int(image.sum()) - sum(kept), moved]


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
    np.testing.assert_array_equal(stats, [valid.sum(), *alloc["kept"], alloc["dropped"], alloc["redistributed"],
                                          *_image_counts(probs, alloc, is_image, valid, strategy, layer.router.beta)])
    assert alloc["dropped"] > 0  # the case exercises overflow
    if strategy == "img_gbpr":
        assert alloc["redistributed"] > 0
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    dropped_or_padding = (alloc["expert"] == -1).reshape(valid.shape)
    assert np.all(y[dropped_or_padding] == 0)  # only the residual carries them
    assert aux == pytest.approx(aux_loss_reference(probs, alloc["expert"], valid.reshape(-1)), abs=1e-6)


def test_aux_loss_is_the_paper_formula_on_a_case_worked_by_hand():
    layer = EVFLayer(LLM, _evf_config(mode="moe", capacity_factor=2.0)).set_train(True)
    weight = np.zeros((2, HIDDEN), np.float32)
    weight[1, 0] = 1.0  # logits = (0, x0): P(vision) = sigmoid(x0)
    layer.router.weight.set_data(ms.Tensor(weight))
    p_vision = np.array([0.9, 0.6, 0.2, 0.3])
    x = np.zeros((1, 4, HIDDEN), np.float32)
    x[0, :, 0] = np.log(p_vision / (1 - p_vision))
    valid = np.array([[True, True, True, False]])
    _, aux, stats = _call(layer, x, np.zeros((1, 4), bool), valid, np.zeros((1, 4), np.float32))
    # experts (1, 1, 0, padding): F = (1/3, 2/3); G = (mean(.1, .4, .8), mean(.9, .6, .2)) = (1.3/3, 1.7/3)
    np.testing.assert_array_equal(stats, [3, 1, 2, 0, 0, 0, 0, 0, 0, 0])  # no image tokens
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
    composed = EVFLayer(LLM, _evf_config(capacity_factor=0.75, redistribute_ratio=0.8)).set_train(True)
    native = EVFLayer(LLM, _evf_config(kernel="custom", capacity_factor=0.75, redistribute_ratio=0.8)).set_train(True)
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
    for key, value in (("mode", "dense"), ("combine", "sum"), ("strategy", "top2"), ("capacity_factor", 0.0),
                       ("eval_capacity_factor", -1.0)):
        with pytest.raises(ConfigError, match=key):
            EVFLayer(LLM, _evf_config(**{key: value}))


# ---- capacity: training vs evaluation ----------------------------------------------------------

def _image_and_text(seed=0):
    """The case of issue 14: one image (144 tokens) and 20 text tokens in one sample, T = 164."""
    x, _, valid, noise = _inputs(1, 164, seed=seed)
    is_image = np.zeros((1, 164), bool)
    is_image[0, 5:149] = True
    return x, is_image, valid, noise


@pytest.mark.parametrize("kernel", ["composed", "custom"])
def test_training_capacity_drops_tokens_and_evaluation_capacity_drops_none(any_mode, kernel):
    """Default factors (1.5 / 2.0). In graph mode set_train changes the phase the compiled graph is keyed by,
    and the native kernel is built per capacity: each state gets its own graph and kernel."""
    layer = _layer(kernel=kernel)
    assert layer.router.capacity_factor == 1.5 and layer.router.eval_capacity_factor == 2.0
    args = _image_and_text()
    results = {}
    for training in (True, False, True):
        layer.set_train(training)
        results.setdefault(training, []).append(_call(layer, *args))
        assert layer.capacity(164) == (123 if training else 164)
    train_stats, eval_stats = results[True][0][2], results[False][0][2]
    # training: the 144 image tokens compete for 123 vision slots, the overflow is redistributed or dropped
    assert train_stats[3] > 0 and train_stats[4] > 0
    np.testing.assert_array_equal(eval_stats[[0, 3, 4]], [164, 0, 0])
    np.testing.assert_array_equal(results[True][1][2], train_stats)  # back in training: the training graph again
    np.testing.assert_array_equal(results[True][1][0], results[True][0][0])


def test_evaluation_output_does_not_depend_on_the_batch_it_runs_in():
    """With capacity T nothing is dropped, so a sample's output is the same alone and beside other samples."""
    layer = _layer(training=False)
    x, is_image, valid, noise = _inputs(4, 16, image_fraction=0.9, seed=6)
    together, _, stats = _call(layer, x, is_image, valid, noise)
    assert stats[3] == 0
    for row in range(4):
        alone, _, _ = _call(layer, x[row:row + 1], is_image[row:row + 1], valid[row:row + 1], noise[row:row + 1])
        np.testing.assert_allclose(alone[0], together[row], rtol=1e-6, atol=1e-6)
    layer.set_train(True)
    assert _call(layer, x, is_image, valid, noise)[2][3] > 0  # the same batch drops tokens in training


# ---- precision: a float32 router under mixed precision -----------------------------------------

class _RoutingProbe(ms.nn.Cell):
    """The router as the EVF layer calls it, from inside a (possibly mixed-precision) network."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def construct(self, x, is_image, valid, noise):
        num_tokens = x.shape[0] * x.shape[1]
        routing = self.layer.router(x.reshape(num_tokens, HIDDEN), is_image.reshape(num_tokens),
                                    valid.reshape(num_tokens), noise.reshape(num_tokens))
        return routing + self.layer(x, is_image, valid, noise)


@pytest.mark.parametrize("amp_level", ["O2", "O3"])
def test_router_probabilities_and_allocation_under_float16_equal_float32_bit_for_bit(any_mode, amp_level):
    # router std 0.02 (stage 3's start): probabilities near 0.5, where float16 has few values and GBPR ties
    x, is_image, valid, noise = _inputs(2, 64, image_fraction=0.8, valid_fraction=0.9, seed=9)
    x = x.astype(np.float16).astype(np.float32)  # the same inputs for both: exactly representable in float16
    args = [ms.Tensor(a) for a in (x, is_image, valid, noise)]

    def build():
        ms.set_seed(0)  # the same FFN weights in both networks
        layer = _layer(strategy="img_gbpr", capacity_factor=1.0, min_capacity=0)
        layer.router.weight.set_data(ms.Tensor(np.random.default_rng(1).normal(0, 0.02, (2, HIDDEN)), ms.float32))
        return _RoutingProbe(layer)

    full = [t.asnumpy() for t in build()(*args)]
    net = ms.amp.auto_mixed_precision(build(), amp_level, dtype=ms.float16)
    half = [t.asnumpy() for t in net(*args)]
    names = ("probs", "expert", "slot", "aux_loss", "stats")
    for name, a, b in zip(names, full, half):
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert full[4][3] > 0 and full[4][4] > 0  # the case overflows and redistributes: priorities matter
    assert len(np.unique(full[0][:, 1])) > 100
    np.testing.assert_array_equal(half[6], full[6])  # the layer's own aux loss and statistics as well
    np.testing.assert_array_equal(half[7], full[7])
    y_full, y_half = full[5], half[5]
    error = np.linalg.norm(y_full - y_half) / np.linalg.norm(y_full)
    assert 0 < error < 1e-2  # the FFNs did run in float16


def _precision(cell):
    flags = cell.get_flags()
    return next(name for name in ("fp16", "bf16", "fp32") if flags.get(name))


def test_router_refuses_half_precision_flags_and_keeps_its_place():
    layer = _layer()
    names = [p.name for p in layer.get_parameters()]
    ms.amp.auto_mixed_precision(layer, "O2", dtype=ms.bfloat16)
    assert isinstance(layer.router, Router) and _precision(layer.router) == "fp32"  # not wrapped, not cast
    assert _precision(layer.language_ffn) == _precision(layer.vision_ffn) == "bf16"
    layer.router.to_float(ms.float16)
    assert _precision(layer.router) == "fp32"
    assert [p.name for p in layer.get_parameters()] == names and "router.weight" in names


# ---- non-finite router probabilities -----------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_token_is_dropped_counted_and_zero_and_the_aux_loss_reports_it(any_mode, bad):
    layer = _layer(strategy="img_gbpr", capacity_factor=0.75, min_capacity=0)
    x, is_image, valid, noise = _inputs(2, 8, seed=SEED)
    poisoned = x.copy()
    poisoned[0, 3, :] = bad  # logits NaN or +-inf: the row's probabilities are not finite
    y, aux, stats = _call(layer, poisoned, is_image, valid, noise)
    as_padding = valid.copy()
    as_padding[0, 3] = False
    y_ref, _, stats_ref = _call(layer, poisoned * np.isfinite(poisoned), is_image, as_padding, noise)
    assert np.all(y[0, 3] == 0)
    np.testing.assert_array_equal(y[as_padding], y_ref[as_padding])  # the others as if it were padding
    np.testing.assert_array_equal(stats[[1, 2, 4]], stats_ref[[1, 2, 4]])
    assert stats[0] == stats_ref[0] + 1 and stats[3] == stats_ref[3] + 1  # valid, and counted as dropped
    assert not np.isfinite(aux)  # the trainer's NaN detection sees the step


def test_a_non_finite_router_weight_drops_every_token():
    layer = _layer()
    weight = layer.router.weight.asnumpy()
    weight[1, 0] = np.nan
    layer.router.weight.set_data(ms.Tensor(weight))
    x, is_image, valid, noise = _inputs(2, 8, valid_fraction=0.8)
    y, aux, stats = _call(layer, x, is_image, valid, noise)
    image = (is_image & valid).sum()
    np.testing.assert_array_equal(stats, [valid.sum(), 0, 0, valid.sum(), 0, image, 0, 0, image, 0])
    assert np.all(y == 0) and np.isnan(aux)
