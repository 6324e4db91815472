"""The FFN kinds: SwiGLU and PanGu-pi's series-informed activation, against numpy; FastGeLU is the released formula."""
import dataclasses

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops

from eve_ms.config import LLMConfig
from eve_ms.models.ffn import FeedForward, ffn_param_count

CONFIG = LLMConfig(vocab_size=8, hidden_size=16, intermediate_size=24, num_layers=1, num_heads=2)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def release_fast_gelu(x):
    """The Eve release's FastGELUMindSpore, in float64: x * sigmoid(1.702 |x|) * exp(0.851 (x - |x|))."""
    x = np.asarray(x, np.float64)
    return x * _sigmoid(1.702 * np.abs(x)) * np.exp(0.851 * (x - np.abs(x)))


def test_mindspore_fast_gelu_is_the_released_formula_in_value_and_gradient():
    x = np.concatenate([np.linspace(-40, 40, 20001), [0.0, -1e-8, 1e-8]]).astype(np.float32)
    np.testing.assert_allclose(ops.fast_gelu(Tensor(x)).asnumpy(), release_fast_gelu(x), rtol=1e-6, atol=1e-7)
    # the |x| form is x * sigmoid(1.702 x) written to keep exp from overflowing; its derivative follows
    xd = x.astype(np.float64)
    np.testing.assert_allclose(release_fast_gelu(x), xd * _sigmoid(1.702 * xd), rtol=1e-12, atol=1e-300)
    s = _sigmoid(1.702 * xd)
    grad = ms.grad(ops.fast_gelu)(Tensor(x)).asnumpy()
    np.testing.assert_allclose(grad, s + 1.702 * xd * s * (1 - s), rtol=1e-5, atol=1e-6)


def _weights(ffn, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, param in ffn.parameters_and_names():
        value = (rng.standard_normal(param.shape) / np.sqrt(param.shape[-1])).astype(np.float32)
        param.set_data(Tensor(value))
        out[name] = value.astype(np.float64)
    return out


def _linear(w, name, x):
    return x @ w[f"{name}.weight"].T + w.get(f"{name}.bias", 0.0)


@pytest.mark.parametrize("bias", [False, True])
def test_series_ffn_adds_a_fast_gelu_gate_to_the_silu_gate(bias):
    config = dataclasses.replace(CONFIG, mlp_bias=bias)
    ffn = FeedForward(config, "series")
    w = _weights(ffn)
    x = np.random.default_rng(1).standard_normal((2, 5, 16)).astype(np.float32)
    gate, gate2 = _linear(w, "gate_proj", x), _linear(w, "gate_proj2", x)
    expected = _linear(w, "down_proj", (gate * _sigmoid(gate) + release_fast_gelu(gate2)) * _linear(w, "up_proj", x))
    np.testing.assert_allclose(ffn(Tensor(x)).asnumpy(), expected, atol=2e-5)


def test_swiglu_ffn_has_no_second_gate_and_is_the_llama_mlp():
    ffn = FeedForward(CONFIG)
    assert sorted(name for name, _ in ffn.parameters_and_names()) == [
        "down_proj.weight", "gate_proj.weight", "up_proj.weight"]
    w = _weights(ffn)
    x = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    gate = _linear(w, "gate_proj", x)
    expected = _linear(w, "down_proj", gate * _sigmoid(gate) * _linear(w, "up_proj", x))
    np.testing.assert_allclose(ffn(Tensor(x)).asnumpy(), expected, atol=2e-5)


@pytest.mark.parametrize("kind", ["swiglu", "series"])
@pytest.mark.parametrize("bias", [False, True])
def test_ffn_param_count_equals_the_instantiated_ffn(kind, bias):
    config = dataclasses.replace(CONFIG, mlp_bias=bias)
    ffn = FeedForward(config, kind)
    assert ffn_param_count(config, kind) == sum(int(np.prod(p.shape)) for p in ffn.get_parameters())


def test_unknown_ffn_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown FFN kind 'geglu'"):
        FeedForward(CONFIG, "geglu")
