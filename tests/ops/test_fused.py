"""llm.fused_ops: which implementation each device target gets, the errors, and each fused call's arguments.

No NPU here: the fused operators never run. The argument-building functions are checked against
what MindSpore 2.9 documents for each operator (layout, mask convention, scale, head counts), and
the fused paths of the model are run end to end with numpy stand-ins written from those docs.
"""
import numpy as np
import pytest
from mindspore import Tensor

from eve_ms.config import ConfigError, LLMConfig, from_dict
from eve_ms.ops import fused
from eve_ms.ops.fused import (
    COMPOSED, FUSED_OP_APIS, FusedOps, flash_attention_kwargs, flash_attention_mask, rotary_layout, select_fused_ops,
)

ALL_ON = FusedOps(attention=True, rotary=True, rms_norm=True, swiglu=True)


def config(**overrides) -> LLMConfig:
    fields = dict(vocab_size=61, hidden_size=64, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2)
    fields.update(overrides)
    return LLMConfig(**fields)


@pytest.mark.parametrize("setting, device, expected", [
    ("auto", "Ascend", ALL_ON),
    ("on", "Ascend", ALL_ON),
    ("off", "Ascend", COMPOSED),
    ("auto", "CPU", COMPOSED),
    ("off", "CPU", COMPOSED),
    ("auto", "GPU", COMPOSED),
    ("off", "GPU", COMPOSED),
    ("auto", "ascend", ALL_ON),  # device names as the runtime accepts them
])
def test_each_device_target_gets_its_implementation_for_each_setting(setting, device, expected):
    assert select_fused_ops(config(fused_ops=setting), device) == expected


def test_the_default_setting_is_auto_and_follows_the_context_device_target():
    assert LLMConfig().fused_ops == "auto"
    assert select_fused_ops(config()) == COMPOSED  # the tests' context is CPU


@pytest.mark.parametrize("device", ["CPU", "GPU"])
def test_on_off_ascend_is_a_config_error_naming_the_operator(device):
    with pytest.raises(ConfigError, match=r"llm\.fused_ops: on .*device target is " + device
                       + r".*mindspore\.ops\.flash_attention_score \(attention\).*auto .* or off"):
        select_fused_ops(config(fused_ops="on"), device)


def test_on_on_cpu_fails_when_the_model_is_built():
    from eve_ms.models.llm import LLM

    with pytest.raises(ConfigError, match="flash_attention_score"):
        LLM(config(fused_ops="on"))


def test_an_unknown_setting_is_an_error_naming_the_key_and_the_file():
    with pytest.raises(ConfigError, match=r"llm section of run\.yaml: llm\.fused_ops must be one of .*'yes'"):
        from_dict(LLMConfig, {"fused_ops": "yes"}, "run.yaml", "llm")


def test_a_run_yaml_asking_for_fused_ops_on_cpu_fails_when_it_loads(tmp_path):
    from eve_ms.training.config import load_train_config

    path = tmp_path / "run.yaml"
    path.write_text("task: eve_ms.training.stages:build_task\ncontext: {device_target: CPU}\n"
                    "model: {model_config: {llm: {fused_ops: 'on'}}}\n")
    with pytest.raises(ConfigError, match=rf"flash_attention_score.*in {path}"):
        load_train_config(path)
    path.write_text(path.read_text().replace("'on'", "auto"))
    assert load_train_config(path).model["model_config"]["llm"]["fused_ops"] == "auto"


@pytest.mark.parametrize("overrides, op, reason", [
    ({"head_dim": 12}, "attention", "head_dim=12 must be a multiple of 16"),
    ({"hidden_size": 8 * 600, "num_heads": 8, "num_kv_heads": 8}, "attention", "head_dim=600"),
    ({"hidden_size": 16 * 300, "num_heads": 300, "num_kv_heads": 300}, "attention", "num_heads=300"),
    ({"rms_norm_eps": 2.0}, "rms_norm", "rms_norm_eps=2.0"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}}, "rotary",
     "attention factor 1.139"),
])
def test_a_model_outside_an_operators_constraints(overrides, op, reason, caplog):
    # on: an error naming the operator and the constraint; auto: that operator falls back, the others stay
    with pytest.raises(ConfigError, match=rf"{FUSED_OP_APIS[op]} \({op}\) does not apply.*{reason}"):
        select_fused_ops(config(fused_ops="on", **overrides), "Ascend")
    fused._warned.clear()
    with caplog.at_level("WARNING", logger="eve_ms.ops.fused"):
        chosen = select_fused_ops(config(**overrides), "Ascend")
    assert getattr(chosen, op) is False and chosen.swiglu
    assert FUSED_OP_APIS[op] in caplog.text and reason in caplog.text
    if op == "attention":  # the rotary operator runs inside the fused attention only
        assert chosen.rotary is False
    if op == "rotary":  # the attention stays fused, with the composed rotary formula inside
        assert chosen.attention is True


# --------------------------------------------------------------------------- arguments of the fused calls


@pytest.mark.parametrize("heads, kv_heads, head_dim", [(4, 2, 16), (8, 8, 64), (16, 1, 128)])
def test_flash_attention_arguments_carry_query_heads_our_scale_and_layout(heads, kv_heads, head_dim):
    kwargs = flash_attention_kwargs(config(hidden_size=heads * head_dim, num_heads=heads, num_kv_heads=kv_heads))
    assert kwargs["head_num"] == heads  # N1; the operator reads N2 from key's shape
    assert kwargs["scalar_value"] == pytest.approx(1 / np.sqrt(head_dim), rel=1e-15)
    assert kwargs["input_layout"] == "BSND"
    assert kwargs["keep_prob"] == 1.0  # no attention dropout, so no drop_mask
    assert kwargs["sparse_mode"] == 0  # defaultMask: our full [B, 1, S, S] mask as given
    assert kwargs["pre_tokens"] == kwargs["next_tokens"] == 2**31 - 1  # no band: the mask is causal itself
    import inspect

    from mindspore import ops

    assert set(kwargs) <= set(inspect.signature(ops.flash_attention_score).parameters)


def _allowed(real, s):
    causal = np.tril(np.ones((s, s), bool))
    return causal[None] & real[:, None, :].astype(bool)  # [B, S, S]


def test_flash_attention_mask_is_causal_and_padding_with_one_meaning_discard():
    from eve_ms.models.llm import _mask_bias

    s = 6
    real = np.array([[0, 0, 1, 1, 1, 1],    # left padding
                     [1, 1, 1, 1, 0, 0],    # right padding
                     [1, 1, 1, 1, 1, 1]], np.int32)
    allowed = _allowed(real, s)
    mask = flash_attention_mask(_mask_bias(Tensor(allowed[:, None]))).asnumpy()
    assert mask.shape == (3, 1, s, s) and mask.dtype == np.uint8
    expected = (~allowed).astype(np.uint8)
    np.fill_diagonal(expected[0], 0)  # left-padding queries see nothing: they keep their own key
    np.fill_diagonal(expected[1], 0)
    np.testing.assert_array_equal(mask[:, 0], expected)
    # every real query attends exactly to the real keys at or before it
    for b in range(3):
        for i in np.flatnonzero(real[b]):
            np.testing.assert_array_equal(mask[b, 0, i] == 0, (np.arange(s) <= i) & real[b].astype(bool))


def test_rotary_tables_move_to_the_bsnd_layout_without_changing_values(rng):
    cos = rng.standard_normal((2, 1, 5, 8)).astype(np.float32)
    sin = rng.standard_normal((2, 1, 5, 8)).astype(np.float32)
    c, s = rotary_layout(Tensor(cos), Tensor(sin), 2, 5)
    assert c.shape == s.shape == (2, 5, 1, 8)
    np.testing.assert_array_equal(c.asnumpy()[:, :, 0], cos[:, 0])
    np.testing.assert_array_equal(s.asnumpy()[:, :, 0], sin[:, 0])


def test_mindspores_flash_attention_primitive_accepts_the_arguments():
    """Built as ops.flash_attention_score builds it: its attribute checks run on any device (no kernel here)."""
    from mindspore.ops.operations.nn_ops import FlashAttentionScore

    kwargs = flash_attention_kwargs(config(hidden_size=128, num_heads=8, num_kv_heads=2))
    order = ("head_num", "keep_prob", "scalar_value", "pre_tokens", "next_tokens", "inner_precise", "input_layout",
             "sparse_mode")
    FlashAttentionScore(*(kwargs[name] for name in order))
    with pytest.raises(ValueError, match="input_layout"):  # the check is real: a layout it does not know fails
        FlashAttentionScore(*(dict(kwargs, input_layout="BNDS")[name] for name in order))
