"""Tokenizers: load a Hugging Face tokenizer (tokenizer.json or a sentencepiece directory), or train a tiny BPE.

Only fast (Rust) tokenizers are used: labels are assigned from character offsets, which only
they report. A sentencepiece directory is converted to a fast tokenizer by `transformers`.
The `<image>` tag never reaches the tokenizer (samples.py splits text on it first), so the
tokenizer needs no image token.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional

from eve_ms.data.report import DataError

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3 = LLMConfig's pad/bos/eos defaults
# Conventional names, tried in order, for a bare tokenizer.json that carries no token roles.
_ROLE_NAMES = {
    "bos_token": ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"),
    "eos_token": ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", "<|im_end|>"),
    "pad_token": ("<pad>", "<|pad|>", "[PAD]"),
    "unk_token": ("<unk>", "[UNK]"),
}


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the data pipeline places itself."""

    bos: Optional[int]
    eos: int
    pad: int


def special_ids(tokenizer) -> SpecialIds:
    """bos/eos/pad ids; pad falls back to unk (as LLaVA v1 does), then eos."""
    if tokenizer.eos_token_id is None:
        raise DataError(f"tokenizer {tokenizer.name_or_path!r} has no eos token (the v1 template ends turns with it)")
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.eos_token_id
    return SpecialIds(bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=pad)


def load_tokenizer(path: str):
    """A fast tokenizer from a tokenizer.json file or a Hugging Face tokenizer directory."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = os.fspath(path)
    if os.path.isfile(path):
        try:
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=path)
        except Exception as err:  # tokenizers raises its own exception types
            raise DataError(f"{path}: not a tokenizer.json file: {err}") from err
        vocab = tokenizer.get_vocab()
        for role, names in _ROLE_NAMES.items():
            name = next((n for n in names if n in vocab), None)
            if name is not None:
                setattr(tokenizer, role, name)
    elif os.path.isdir(path):
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        except Exception as err:
            if not os.path.isfile(os.path.join(path, "tokenizer.model")):
                raise DataError(f"{path}: cannot load a tokenizer from this directory: {err}") from err
            # A sentencepiece model whose config names a class transformers lacks: read it as Llama's.
            from transformers import LlamaTokenizerFast

            tokenizer = LlamaTokenizerFast(vocab_file=os.path.join(path, "tokenizer.model"))
    else:
        raise DataError(f"tokenizer not found: {path}")
    if not tokenizer.is_fast:
        raise DataError(f"{path}: only fast tokenizers are supported (install `sentencepiece` to convert this one)")
    return tokenizer


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: tuple = SPECIAL_TOKENS,
    save_dir: Optional[str] = None,
):
    """Train a byte-level BPE on `texts` -> PreTrainedTokenizerFast (saved to `save_dir` if given).

    Special tokens take the first ids in the given order; with the default, <pad>=0, <s>=1,
    </s>=2, <unk>=3. Byte-level means every string is encodable (no unknown tokens).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    missing = [t for t in SPECIAL_TOKENS if t not in special_tokens]
    if missing:
        raise ValueError(f"special_tokens must include {SPECIAL_TOKENS}, missing {missing}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if save_dir is not None:
        os.makedirs(save_dir, exist_ok=True)
        tokenizer.save_pretrained(save_dir)
    return tokenizer


def conversation_texts(data_path: str) -> list[str]:
    """Every turn's text of a LLaVA data file (without <image> tags) plus the v1 template's words:
    a corpus for `train_bpe_tokenizer`. Malformed or odd records are passed over (`data check` reports them)."""
    from eve_ms.data.readers import RawRecord, iter_raw_records
    from eve_ms.data.templates import IMAGE, VICUNA_V1_SYSTEM

    texts = [VICUNA_V1_SYSTEM + " USER: ASSISTANT:"]
    for item in iter_raw_records(data_path):
        if isinstance(item, RawRecord) and isinstance(item.value, dict):
            for turn in item.value.get("conversations") or []:
                if isinstance(turn, dict) and isinstance(turn.get("value"), str):
                    texts.append(turn["value"].replace(IMAGE, ""))
    return texts


def encode_with_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` and each token's character span; special-token strings in data stay text."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
    return encoded["input_ids"], encoded["offset_mapping"]
