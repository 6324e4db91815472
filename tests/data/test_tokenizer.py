"""Tokenizer loading (tokenizer.json, Hugging Face directory, sentencepiece directory) and the tiny BPE."""
import io
import json
import os

import numpy as np
import pytest

from eve_ms.config import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from eve_ms.data.report import DataError
from eve_ms.data.samples import SampleEncoder, parse_record
from eve_ms.data.templates import get_template
from eve_ms.data.tokenizer import load_tokenizer, special_ids, train_bpe_tokenizer

TEXT = "USER: What is two plus two? ASSISTANT: Four."


def test_saved_tiny_bpe_loads_from_its_directory_and_its_json(fixed_tokenizer, fixed_tokenizer_dir):
    expected = fixed_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    for path in (fixed_tokenizer_dir, os.path.join(fixed_tokenizer_dir, "tokenizer.json")):
        loaded = load_tokenizer(path)
        assert loaded.is_fast
        assert loaded(TEXT, add_special_tokens=False)["input_ids"] == expected
        assert special_ids(loaded) == special_ids(fixed_tokenizer)
    assert special_ids(fixed_tokenizer).pad == 0


def test_byte_level_bpe_encodes_unseen_text_without_unknowns(fixed_tokenizer):
    ids = fixed_tokenizer("Zebra ✓ 日本", add_special_tokens=False)["input_ids"]
    assert fixed_tokenizer.unk_token_id not in ids
    assert fixed_tokenizer.decode(ids) == "Zebra ✓ 日本"


def test_training_requires_the_four_special_tokens():
    with pytest.raises(ValueError, match="<pad>"):
        train_bpe_tokenizer(["a b c"], 300, special_tokens=("<s>", "</s>", "<unk>"))


def test_missing_or_invalid_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="tokenizer not found"):
        load_tokenizer(str(tmp_path / "nope"))
    bogus = tmp_path / "tokenizer.json"
    bogus.write_text("{}", encoding="utf-8")
    with pytest.raises(DataError, match="not a tokenizer.json"):
        load_tokenizer(str(bogus))


def test_sentencepiece_directory_gives_llama_style_v1_labels(tmp_path, fixed_corpus):
    import sentencepiece as spm  # a mindformers dependency

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(fixed_corpus), model_writer=model, vocab_size=400, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, minloglevel=2,
    )
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.is_fast and (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    assert special_ids(tokenizer).pad == 0  # no pad token: unk, as LLaVA v1 does

    encoder = SampleEncoder(get_template("v1"), tokenizer, num_image_tokens=3, max_length=512)
    record = {"image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A red cat."}]}
    ids, labels = encoder.encode_pieces(encoder.template.render(parse_record(record, encoder.template).turns))
    learnt = labels[labels != IGNORE_INDEX]
    # Sentencepiece ids of the reply, looked up piece by piece in the model's vocabulary.
    vocab = tokenizer.get_vocab()
    assert learnt.tolist() == [vocab[p] for p in ("▁A", "▁red", "▁cat", ".")] + [2]
    assert ids[0] == 1 and (ids == IMAGE_TOKEN_INDEX).sum() == 3
    first = int(np.flatnonzero(labels != IGNORE_INDEX)[0])
    assert tokenizer.convert_ids_to_tokens(ids[first - 2:first].tolist()) == ["▁ASSISTANT", ":"]
