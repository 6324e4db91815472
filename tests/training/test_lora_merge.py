"""MindFormers LoRA on a toy network: which layers get it, what trains, and merging back to nn.Dense."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from eve_ms.training.config import LoraSettings
from eve_ms.training.checkpoint import CheckpointError
from eve_ms.training.lora import apply_lora, merge_lora, merge_lora_tensors
from eve_ms.training.trainable import LORA_PARAM_GLOB, freeze_all_but
from toy_task import ToyLM


def _lora_cells(network):
    from mindpet.delta.lora import LoRADense

    return {path: cell for path, cell in network.cells_and_names() if isinstance(cell, LoRADense)}


def _train_lora_a_few_steps(network, x, steps=3):
    """Plain SGD on the LoRA parameters so that B is no longer zero."""
    params = [p for p in network.trainable_params()]
    grad_fn = ms.value_and_grad(lambda inp: ops.mean(ops.square(network(inp)[0])), None, params)
    for _ in range(steps):
        _, grads = grad_fn(x)
        for p, g in zip(params, grads):
            p.set_data(p - 0.5 * g)


def test_lora_goes_on_every_dense_of_the_scope_and_keeps_names():
    ms.set_seed(0)
    net = ToyLM()
    before = {p.name for p in net.get_parameters()}
    lora_names = apply_lora(net, "llm", LoraSettings(lora_rank=2, lora_alpha=4, lora_dropout=0.0))
    cells = _lora_cells(net)
    assert sorted(cells) == ["llm.head", "llm.layers.0.down", "llm.layers.0.up", "llm.layers.1.down", "llm.layers.1.up"]
    after = {p.name for p in net.get_parameters()}
    assert before <= after  # the base weights keep their names
    assert sorted(after - before) == sorted(lora_names)
    assert "llm.layers.1.up.mindpet_delta_lora_a" in lora_names
    for cell in cells.values():  # fp32 network -> fp32 LoRA, computing in fp32
        assert cell.mindpet_delta_lora_a.dtype == ms.float32 and cell.dtype == ms.float32
        assert cell.scaling == pytest.approx(2.0)


def test_lora_target_modules_selects_by_child_name():
    net = ToyLM()
    apply_lora(net, "llm", LoraSettings(lora_rank=2, lora_alpha=2, target_modules=["up"]))
    assert sorted(_lora_cells(net)) == ["llm.layers.0.up", "llm.layers.1.up"]
    with pytest.raises(ValueError, match="q_proj"):
        apply_lora(ToyLM(), "llm", LoraSettings(target_modules=["q_proj"]))


def test_freeze_leaves_only_lora_and_declared_params_trainable():
    net = ToyLM()
    apply_lora(net, "llm", LoraSettings(lora_rank=2, lora_alpha=4))
    trainable = freeze_all_but(net, ["adapter.*", LORA_PARAM_GLOB])
    assert all(n.startswith("adapter.") or "mindpet_delta_lora" in n for n in trainable)
    assert len(trainable) == 2 + 2 * 5
    assert not net.llm.layers[0].up.weight.requires_grad


def test_merged_network_matches_lora_network_and_has_no_lora_cells():
    ms.set_seed(1)
    net = ToyLM()
    base_names = sorted(p.name for p in net.get_parameters())
    apply_lora(net, "llm", LoraSettings(lora_rank=2, lora_alpha=6, lora_dropout=0.1))
    freeze_all_but(net, [LORA_PARAM_GLOB])
    x = ms.Tensor(np.random.default_rng(0).normal(size=(3, 5, 6)).astype(np.float32))
    net.set_train(True)
    _train_lora_a_few_steps(net.llm, net.adapter(x))
    cell = net.llm.layers[0].up
    assert np.abs(cell.mindpet_delta_lora_b.asnumpy()).max() > 1e-3  # B trained away from zero

    net.set_train(False)  # LoRA dropout is identity in eval mode
    labels = ms.Tensor(np.zeros((3, 5), np.int32))
    lora_logits = net.llm(net.adapter(x))[0].asnumpy()
    lora_loss = net(x, labels)[0].asnumpy()
    # the merge formula, independently: W' = W + (alpha / r) B A
    w, a, b = (cell.weight.asnumpy(), cell.mindpet_delta_lora_a.asnumpy(), cell.mindpet_delta_lora_b.asnumpy())
    expected_w = w + (6 / 2) * b @ a
    # the same merge on a checkpoint's arrays (stage 3 builds its model once from them): the very same values
    lora_tensors = {p.name: p.asnumpy() for p in net.get_parameters()}
    merged_tensors, count = merge_lora_tensors(lora_tensors, LoraSettings(lora_rank=2, lora_alpha=6), "toy")
    assert count == 5 and not any("mindpet_delta_lora" in name for name in merged_tensors)

    assert merge_lora(net) == 5
    assert not _lora_cells(net)
    assert isinstance(net.llm.layers[0].up, nn.Dense)
    np.testing.assert_allclose(net.llm.layers[0].up.weight.asnumpy(), expected_w, atol=1e-6)
    assert sorted(p.name for p in net.get_parameters()) == base_names == sorted(merged_tensors)
    for param in net.get_parameters():
        np.testing.assert_array_equal(merged_tensors[param.name], param.asnumpy(), err_msg=param.name)
    with pytest.raises(CheckpointError, match="mindpet_delta_lora_a has rank 2, its pet_config says lora_rank 4"):
        merge_lora_tensors(lora_tensors, LoraSettings(lora_rank=4, lora_alpha=6), "toy")
    np.testing.assert_allclose(net.llm(net.adapter(x))[0].asnumpy(), lora_logits, atol=1e-5)
    np.testing.assert_allclose(net(x, labels)[0].asnumpy(), lora_loss, atol=1e-5)


def test_lora_reaches_pangu_pi_pro_layers_second_gate_and_attention_shortcut():
    from eve_ms.config import LLMConfig
    from eve_ms.models.llm import LLM

    class Wrapper(nn.Cell):
        def __init__(self):
            super().__init__()
            self.llm = LLM(LLMConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=2,
                                     ffn_below_split="series", attn_shortcut_width=8, layer_split=1))

        def construct(self, ids):
            return self.llm(ids)

    ms.set_seed(0)
    net = Wrapper()
    ids = ms.Tensor(np.arange(10, dtype=np.int32).reshape(2, 5))
    before = net(ids).asnumpy()
    apply_lora(net, "llm", LoraSettings(lora_rank=2, lora_alpha=4, lora_dropout=0.0))
    cells = _lora_cells(net)
    assert {"llm.model.layers.0.mlp.gate_proj2", "llm.model.layers.1.attn_linear.in_proj",
            "llm.model.layers.1.attn_linear.out_proj"} <= set(cells)
    np.testing.assert_allclose(net(ids).asnumpy(), before, atol=1e-6)  # LoRA's B starts at zero
    _train_lora_a_few_steps(net, ids)
    adapted = net(ids).asnumpy()
    assert np.abs(adapted - before).max() > 1e-4
    merge_lora(net)
    np.testing.assert_allclose(net(ids).asnumpy(), adapted, atol=1e-5)


def test_lora_layers_drop_with_seeded_dropouts_of_the_configured_rate():
    from eve_ms.training.lora import _lora_dense_class

    network = ToyLM()
    apply_lora(network, "llm", LoraSettings(lora_rank=2, lora_alpha=4, lora_dropout=0.05))
    layers = [cell for _, cell in network.cells_and_names() if isinstance(cell, _lora_dense_class())]
    assert len(layers) == 5  # 2 x (up, down) + head
    assert [(type(c.lora_dropout).__name__, c.lora_dropout.p, c.lora_dropout.salt) for c in layers] == [
        ("SeededDropout", 0.05, salt) for salt in range(5)]
