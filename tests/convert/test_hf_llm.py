"""Hugging Face Llama -> eve-ms LLM: converted models give Hugging Face's logits, loss and greedy tokens.

Reference models are tiny random `transformers.LlamaForCausalLM`s saved with `save_pretrained`;
their weights are re-drawn at order-one scale so every tensor visibly matters.
"""
import json
import math

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor, nn
from safetensors.numpy import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from eve_ms.config import ConfigError
from eve_ms.convert.hf_llm import export_hf_llm_state_dict, llm_config_from_hf, load_hf_llm
from eve_ms.convert.weights import CheckpointError
from eve_ms.inference.generate import greedy_generate
from eve_ms.models.llm import LLMDecodeStep

VOCAB = 97


def make_hf_llama(directory, seed=0, **overrides) -> LlamaForCausalLM:
    fields = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    fields.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**fields)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2:
                param.normal_(0.0, 1.0 / math.sqrt(param.shape[1]))
            else:
                param.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.1)
    model.save_pretrained(directory, safe_serialization=True)
    return model


def hf_logits(model, ids, mask=None, position_ids=None):
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=None if mask is None else torch.as_tensor(mask, dtype=torch.long),
            position_ids=None if position_ids is None else torch.as_tensor(position_ids, dtype=torch.long),
        )
    return out.logits.numpy()


VARIANTS = {
    "gqa_untied": {},
    "mha_tied_bias": dict(num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
    "head_dim_theta": dict(head_dim=12, rope_theta=500.0),
    "linear_rope": dict(rope_scaling={"type": "linear", "factor": 2.0}),
    "dynamic_rope": dict(rope_scaling={"type": "dynamic", "factor": 2.0}),
    "llama3_rope": dict(
        num_key_value_heads=1, rope_theta=100.0,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32},
    ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_converted_model_gives_hugging_face_logits(tmp_path, rng, variant):
    hf = make_hf_llama(tmp_path, **VARIANTS[variant])
    llm = load_hf_llm(tmp_path)
    ids = rng.integers(0, VOCAB, (2, 40)).astype(np.int32)  # long enough to reach low rope frequencies
    logits = llm(Tensor(ids)).asnumpy()
    np.testing.assert_allclose(logits, hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_padded_batch_gives_each_sample_its_unpadded_logits(tmp_path, rng):
    hf = make_hf_llama(tmp_path)
    llm = load_hf_llm(tmp_path)
    lengths, width = [9, 4, 6], 9
    prompts = [rng.integers(3, VOCAB, n).astype(np.int32) for n in lengths]
    ids = np.zeros((3, width), np.int32)
    mask = np.zeros((3, width), np.int32)
    ids[0], mask[0] = prompts[0], 1
    ids[1, width - 4:], mask[1, width - 4:] = prompts[1], 1  # left padding
    ids[2, :6], mask[2, :6] = prompts[2], 1  # right padding
    logits = llm(Tensor(ids), Tensor(mask)).asnumpy()
    for row, prompt in enumerate(prompts):
        real = mask[row].astype(bool)
        np.testing.assert_allclose(logits[row][real], hf_logits(hf, prompt[None])[0], atol=1e-4, rtol=0)


def test_loss_ignoring_minus_100_equals_hugging_face_loss(tmp_path, rng):
    hf = make_hf_llama(tmp_path, tie_word_embeddings=True)
    llm = load_hf_llm(tmp_path)
    ids = rng.integers(0, VOCAB, (2, 10)).astype(np.int32)
    labels = ids.copy()
    labels[0, :4] = -100
    labels[1, 7:] = -100
    with torch.no_grad():
        expected = hf(input_ids=torch.as_tensor(ids, dtype=torch.long),
                      labels=torch.as_tensor(labels, dtype=torch.long))
    _, loss_sum, count, _, _ = llm.forward_embeds(llm.embed(Tensor(ids)), labels=Tensor(labels))
    assert count.asnumpy() == 12  # 9 shifted targets in each row, 3 of each ignored
    np.testing.assert_allclose(loss_sum.asnumpy() / count.asnumpy(), expected.loss.item(), rtol=1e-5)


class _LossAndLogits(nn.Cell):
    def __init__(self, llm):
        super().__init__()
        self.llm = llm

    def construct(self, input_ids, attention_mask, labels):
        embeds = self.llm.embed(input_ids)
        logits, loss_sum, count, _, _ = self.llm.forward_embeds(embeds, attention_mask, labels=labels)
        return logits, loss_sum, count


def test_graph_mode_logits_and_loss_equal_hugging_face(tmp_path, rng, graph_mode):
    hf = make_hf_llama(tmp_path, attention_bias=True)
    cell = _LossAndLogits(load_hf_llm(tmp_path))
    ids = rng.integers(0, VOCAB, (2, 8)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    # targets only where both the token and the one predicting it are real (outputs at padding are arbitrary)
    labels = np.where(mask.astype(bool) & np.roll(mask, 1, axis=1).astype(bool), ids, -100).astype(np.int32)
    logits, loss_sum, count = cell(Tensor(ids), Tensor(mask), Tensor(labels))
    positions = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    expected = hf_logits(hf, ids, mask, positions)
    real = mask.astype(bool)
    np.testing.assert_allclose(logits.asnumpy()[real], expected[real], atol=1e-4, rtol=0)
    with torch.no_grad():
        hf_loss = hf(input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                     position_ids=torch.as_tensor(positions), labels=torch.as_tensor(labels, dtype=torch.long)).loss
    assert count.asnumpy() == 7 + 5
    np.testing.assert_allclose(loss_sum.asnumpy() / count.asnumpy(), hf_loss.item(), rtol=1e-5)


def test_kv_cache_greedy_decoding_equals_hugging_face_generate(tmp_path, rng, any_mode):
    hf = make_hf_llama(tmp_path, num_key_value_heads=1)
    llm = load_hf_llm(tmp_path)
    ids = rng.integers(3, VOCAB, (2, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0  # batched prompts of different lengths: left padding
    new_tokens = 5

    generated = greedy_generate(LLMDecodeStep(llm), ids, mask, new_tokens)

    with torch.no_grad():
        reference = hf.generate(
            input_ids=torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask),
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
        )[:, ids.shape[1]:].numpy()
    np.testing.assert_array_equal(generated, reference)


def test_decode_step_logits_equal_hugging_face_full_forward(tmp_path, rng):
    hf = make_hf_llama(tmp_path, tie_word_embeddings=True)
    llm = load_hf_llm(tmp_path)
    ids = rng.integers(3, VOCAB, (2, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    prompt = 6
    keys, values = llm.init_cache(2, 12)
    cache_mask = np.zeros((2, 12), np.int32)
    cache_mask[:, :prompt] = mask[:, :prompt]
    logits, keys, values = llm.forward_step(
        llm.embed(Tensor(ids[:, :prompt])), Tensor(cache_mask), Tensor(0, ms.int32), keys, values
    )
    steps = [logits.asnumpy()]
    for t in range(prompt, 9):
        cache_mask[:, t] = 1
        logits, keys, values = llm.forward_step(
            llm.embed(Tensor(ids[:, t:t + 1])), Tensor(cache_mask), Tensor(t, ms.int32), keys, values
        )
        steps.append(logits.asnumpy())
    expected = hf_logits(hf, ids, mask, np.clip(np.cumsum(mask, 1) - 1, 0, None))
    real = mask.astype(bool)
    np.testing.assert_allclose(np.concatenate(steps, 1)[real], expected[real], atol=1e-4, rtol=0)


def test_export_gives_back_the_hugging_face_state_dict(tmp_path):
    hf = make_hf_llama(tmp_path, attention_bias=True)
    exported = export_hf_llm_state_dict(load_hf_llm(tmp_path))
    reference = {k: v.numpy() for k, v in hf.state_dict().items()}
    assert set(exported) == set(reference)
    for name, value in reference.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_unsupported_model_type_is_named(tmp_path):
    make_hf_llama(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "gpt_neox"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="gpt_neox"):
        load_hf_llm(tmp_path)


def test_config_mapping_accepts_mistral_without_sliding_window_only():
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=32, eos_token_id=[5, 6], pad_token_id=None)
    config = llm_config_from_hf(dict(base, model_type="mistral", sliding_window=None))
    assert (config.num_kv_heads, config.eos_token_id, config.pad_token_id) == (1, 5, 0)
    with pytest.raises(ConfigError, match="sliding_window"):
        llm_config_from_hf(dict(base, model_type="mistral", sliding_window=8))
    with pytest.raises(ConfigError, match="qwen2"):
        llm_config_from_hf(dict(base, model_type="qwen2"))


@pytest.mark.parametrize("damage", ["missing", "wrong_shape", "unexpected"])
def test_checkpoint_mismatch_names_the_tensor(tmp_path, damage):
    make_hf_llama(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(str(path))
    name = "model.layers.1.mlp.up_proj.weight"
    if damage == "missing":
        del tensors[name]
    elif damage == "wrong_shape":
        tensors[name] = tensors[name][:, :-1].copy()
    else:
        name = "model.layers.1.mlp.extra.weight"
        tensors[name] = np.zeros((2, 2), np.float32)
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_hf_llm(tmp_path)


def test_rotary_inv_freq_buffers_in_old_checkpoints_are_ignored(tmp_path, rng):
    hf = make_hf_llama(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(str(path))
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    save_file(tensors, str(path), metadata={"format": "pt"})
    ids = rng.integers(0, VOCAB, (1, 5)).astype(np.int32)
    np.testing.assert_allclose(load_hf_llm(tmp_path)(Tensor(ids)).asnumpy(), hf_logits(hf, ids), atol=1e-4, rtol=0)
