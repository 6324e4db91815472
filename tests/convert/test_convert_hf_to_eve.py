"""Hugging Face -> eve-ms component folders and the initial Eve checkpoint, and the LLM back to Hugging Face."""
import json
import os

import numpy as np
import pytest
import torch
from mindspore import Tensor
from safetensors.numpy import load_file, save_file
from transformers import LlamaForCausalLM

from eve_ms.checkpoint_dir import load_eve_checkpoint
from eve_ms.cli import main
from eve_ms.convert.hf_to_eve import load_llm, load_vision
from tiny_sources import llama_logits, pixels, tiny_llama, tiny_vit, vit_features


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    from eve_ms.data.tokenizer import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("hf_sources")
    llama, siglip = tiny_llama(seed=11), tiny_vit("siglip", seed=12)
    llama.save_pretrained(root / "llama")
    siglip.save_pretrained(root / "siglip")
    tokenizer = train_bpe_tokenizer(["a tiny corpus for a tiny tokenizer"] * 3, vocab_size=280)
    tokenizer.save_pretrained(root / "llama")
    return dict(root=root, llama=llama, siglip=siglip, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def assembled(hf):
    out = hf["root"] / "eve"
    argv = ["convert", "hf-eve", "--llm", str(hf["root"] / "llama"), "--vision", str(hf["root"] / "siglip"),
            "--adapter", "ldp", "--out", str(out)]
    assert main(argv) == 0
    return out, load_eve_checkpoint(str(out))


def test_hf_eve_checkpoint_holds_the_llm_the_encoder_and_the_tokenizer(hf, assembled):
    _, (model, config, tokenizer) = assembled
    assert not config.evf.enabled and config.adapter.type == "ldp" and config.vision.backbone == "siglip"
    assert config.num_image_tokens == 1  # a 2x2 grid through LDP's stride-2 block
    ids = np.random.default_rng(0).integers(3, 300, (2, 6)).astype(np.int32)
    np.testing.assert_allclose(model.forward(Tensor(ids))[0].asnumpy(), llama_logits(hf["llama"], ids), atol=1e-4)
    image = pixels(3, batch=2)
    np.testing.assert_allclose(model.vision_tower(Tensor(image)).asnumpy(), vit_features(hf["siglip"], image, "siglip"),
                               atol=1e-4)
    assert tokenizer is not None and tokenizer.get_vocab() == hf["tokenizer"].get_vocab()


def test_adapter_initialisation_is_seeded(hf, assembled, tmp_path):
    out, (model, _, _) = assembled
    again = tmp_path / "again"
    argv = ["convert", "hf-eve", "--llm", str(hf["root"] / "llama"), "--vision", str(hf["root"] / "siglip"),
            "--out", str(again)]
    assert main(argv) == 0
    first, second = load_file(os.path.join(out, "model.safetensors")), load_file(again / "model.safetensors")
    assert set(first) == set(second) and any(name.startswith("adapter.") for name in first)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_component_folders_load_the_same_weights_as_the_hugging_face_folders(hf, tmp_path):
    llm_dir, vision_dir = tmp_path / "llm", tmp_path / "vision"
    assert main(["convert", "hf-llm", "--src", str(hf["root"] / "llama"), "--out", str(llm_dir)]) == 0
    assert main(["convert", "hf-vision", "--src", str(hf["root"] / "siglip"), "--out", str(vision_dir)]) == 0
    assert (llm_dir / "tokenizer" / "tokenizer.json").exists()
    for (name, a), (_, b) in zip(load_llm(str(llm_dir)).parameters_and_names(),
                                 load_llm(str(hf["root"] / "llama")).parameters_and_names()):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy(), err_msg=name)
    image = pixels(4)
    np.testing.assert_array_equal(load_vision(str(vision_dir))(Tensor(image)).asnumpy(),
                                  load_vision(str(hf["root"] / "siglip"))(Tensor(image)).asnumpy())


def test_round_trip_through_eve_gives_hugging_face_back_its_model(hf, assembled, tmp_path):
    from transformers import AutoTokenizer

    from eve_ms.data.tokenizer import encode_with_offsets, load_tokenizer, special_ids

    out, _ = assembled
    umask = os.umask(0o022)  # a usual user's umask
    try:
        assert main(["convert", "to-hf-llm", "--src", str(out), "--out", str(tmp_path / "hf")]) == 0
    finally:
        os.umask(umask)
    exported = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    original = hf["llama"].state_dict()
    for name, value in exported.state_dict().items():
        torch.testing.assert_close(value, original[name], rtol=0, atol=0, msg=name)
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    assert oct(os.stat(tmp_path / "hf" / "model.safetensors").st_mode & 0o777) == oct(0o644)  # world-readable
    # transformers' tokenizer gives the ids eve-ms trains on: <s> first, special-token strings kept as text
    ours = load_tokenizer(os.path.join(str(out), "tokenizer"))
    theirs = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in ("a tiny corpus", "tiny <s> tokenizer </s> for"):
        assert theirs(text)["input_ids"] == [special_ids(ours).bos] + encode_with_offsets(ours, text)[0], text


def test_internlm_layout_loads_with_zero_o_proj_bias(tmp_path):
    llama = tiny_llama(seed=13, attention_bias=True)
    with torch.no_grad():
        for layer in llama.model.layers:
            layer.self_attn.o_proj.bias.zero_()  # InternLM has none
    llama.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(model_type="internlm", bias=True)
    config.pop("attention_bias")
    (tmp_path / "config.json").write_text(json.dumps(config))
    tensors = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.endswith("o_proj.bias")}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    ids = np.random.default_rng(2).integers(3, 300, (1, 5)).astype(np.int32)
    np.testing.assert_allclose(load_llm(str(tmp_path))(Tensor(ids)).asnumpy(), llama_logits(llama, ids), atol=1e-4)


def test_bad_source_is_one_error_line_and_status_2(tmp_path, capsys):
    code = main(["convert", "hf-eve", "--llm", str(tmp_path / "nowhere"), "--vision", str(tmp_path),
                 "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.strip().count("\n") == 0 and "no config.json" in captured.err
