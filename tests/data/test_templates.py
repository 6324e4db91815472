"""Templates and label masks: exact token ids on a fixed tokenizer, spelled out token by token.

Expected ids come from vocabulary lookups of hand-written byte-level BPE tokens (Ġ = a leading
space, Ċ = a newline), never from the code under test.
"""
import numpy as np
import pytest

from eve_ms.config import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from eve_ms.data.samples import SampleEncoder, encode_prompt, parse_record
from eve_ms.data.templates import TEMPLATES, ChatTemplate, Turn, get_template

N_IMG = 3  # image tokens per image in these tests
IMG = "<IMG>"  # marks an image position in the hand-written lists below
SYSTEM_TOKENS = (
    "A Ġchat Ġbetween Ġa Ġcurious Ġuser Ġand Ġan Ġartificial Ġintelligence Ġassistant . "
    "ĠThe Ġassistant Ġgives Ġhelpful , Ġdetailed , Ġand Ġpolite Ġanswers Ġto Ġthe Ġuser 's Ġquestions ."
).split()


def lookup(tokenizer, tokens):
    """ids of hand-written tokens; IMG expands to N_IMG image placeholders."""
    vocab = tokenizer.get_vocab()
    ids = []
    for t in tokens:
        if t == IMG:
            ids += [IMAGE_TOKEN_INDEX] * N_IMG
        else:
            assert t in vocab, f"{t!r} is not one token of the fixed vocabulary"
            ids.append(vocab[t])
    return ids


def encode(tokenizer, template, record, max_length=512):
    encoder = SampleEncoder(get_template(template), tokenizer, num_image_tokens=N_IMG, max_length=max_length)
    conversation = parse_record(record, encoder.template)
    ids, labels = encoder.encode_pieces(encoder.template.render(conversation.turns))
    return ids.tolist(), labels.tolist()


def masked(ids, learnt_from, learnt_to=None):
    return [t if learnt_from <= i < (learnt_to or len(ids)) else IGNORE_INDEX for i, t in enumerate(ids)]


def test_special_token_ids_are_pad_bos_eos_unk(fixed_tokenizer):
    assert [fixed_tokenizer.pad_token_id, fixed_tokenizer.bos_token_id, fixed_tokenizer.eos_token_id,
            fixed_tokenizer.unk_token_id] == [0, 1, 2, 3]


def test_v1_single_turn_with_image_exact_ids_and_labels(fixed_tokenizer):
    record = {"image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"},
        {"from": "gpt", "value": "A red cat."},
    ]}
    ids, labels = encode(fixed_tokenizer, "v1", record)
    prompt = ["<s>"] + SYSTEM_TOKENS + ["ĠUSER", ":", "Ġ", IMG, "Ċ", "What", "Ġis", "Ġthis", "?", "ĠASSISTANT", ":"]
    reply = ["ĠA", "Ġred", "Ġcat", ".", "</s>"]
    expected = lookup(fixed_tokenizer, prompt + reply)
    assert ids == expected
    n_prompt = len(expected) - len(reply)
    assert labels == masked(expected, n_prompt)
    assert ids[0] == 1 and ids[-1] == 2


def test_v1_image_tag_at_end_of_turn_moves_to_start(fixed_tokenizer):
    at_start = {"image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A red cat."}]}
    at_end = {"image": "x.png", "conversations": [
        {"from": "human", "value": "What is this?\n<image>"}, {"from": "gpt", "value": "A red cat."}]}
    assert encode(fixed_tokenizer, "v1", at_end) == encode(fixed_tokenizer, "v1", at_start)


def test_v1_multi_turn_text_only_exact_ids_and_labels(fixed_tokenizer):
    record = {"conversations": [
        {"from": "human", "value": "What is two plus two?"},
        {"from": "gpt", "value": "Four."},
        {"from": "human", "value": "And three?"},
        {"from": "gpt", "value": "Five."},
    ]}
    ids, labels = encode(fixed_tokenizer, "v1", record)
    round1 = ["<s>"] + SYSTEM_TOKENS + "ĠUSER : ĠWhat Ġis Ġtwo Ġplus Ġtwo ? ĠASSISTANT :".split()
    reply1 = ["ĠFour", ".", "</s>"]
    round2 = "USER : ĠAnd Ġthree ? ĠASSISTANT :".split()
    reply2 = ["ĠFive", ".", "</s>"]
    expected = lookup(fixed_tokenizer, round1 + reply1 + round2 + reply2)
    assert ids == expected
    a = len(round1)
    b = a + len(reply1)
    c = b + len(round2)
    learnt = set(range(a, b)) | set(range(c, len(expected)))
    assert labels == [t if i in learnt else IGNORE_INDEX for i, t in enumerate(expected)]


def test_plain_template_is_image_then_caption_newline(fixed_tokenizer):
    record = {"image": "x.png", "conversations": [
        {"from": "human", "value": "Describe this picture briefly.\n<image>"},
        {"from": "gpt", "value": "A red cat."},
    ]}
    ids, labels = encode(fixed_tokenizer, "plain", record)
    expected = lookup(fixed_tokenizer, ["<s>", IMG, "A", "Ġred", "Ġcat", ".", "Ċ"])
    assert ids == expected  # the human text is dropped, as LLaVA's preprocess_plain does
    assert labels == masked(expected, 1 + N_IMG)  # caption and its newline learnt; no eos


def test_generation_prompt_ends_where_the_learnt_reply_starts(fixed_tokenizer):
    record = {"image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A red cat."}]}
    ids, labels = encode(fixed_tokenizer, "v1", record)
    prompt = encode_prompt(fixed_tokenizer, get_template("v1"), [Turn("human", "What is this?", image=True)], N_IMG)
    first_learnt = next(i for i, l in enumerate(labels) if l != IGNORE_INDEX)
    assert prompt.tolist() == ids[:first_learnt]
    plain = encode_prompt(fixed_tokenizer, get_template("plain"), [Turn("human", "", image=True)], N_IMG)
    assert plain.tolist() == lookup(fixed_tokenizer, ["<s>", IMG])


def test_special_token_text_in_data_is_not_a_special_token(fixed_tokenizer):
    record = {"conversations": [{"from": "human", "value": "What</s>"}, {"from": "gpt", "value": "Four."}]}
    ids, _ = encode(fixed_tokenizer, "v1", record)
    assert ids.count(fixed_tokenizer.eos_token_id) == 1  # only the template's end of turn


def test_add_bos_false_drops_only_the_bos(fixed_tokenizer):
    record = {"conversations": [{"from": "human", "value": "And three?"}, {"from": "gpt", "value": "Five."}]}
    ids, _ = encode(fixed_tokenizer, "v1", record)
    encoder = SampleEncoder(get_template("v1"), fixed_tokenizer, N_IMG, 512, add_bos=False)
    no_bos, _ = encoder.encode_pieces(encoder.template.render(parse_record(record, encoder.template).turns))
    assert no_bos.tolist() == ids[1:]


def test_registry_takes_a_new_template_as_one_entry(fixed_tokenizer, monkeypatch):
    custom = ChatTemplate(name="qa", style="two", system="", roles=("Q", "A"), sep=" ", end_of_turn="\n")
    monkeypatch.setitem(TEMPLATES, "qa", custom)
    record = {"conversations": [{"from": "human", "value": "And three?"}, {"from": "gpt", "value": "Five."}]}
    ids, labels = encode(fixed_tokenizer, "qa", record)
    learnt = [t for t in labels if t != IGNORE_INDEX]
    assert fixed_tokenizer.decode(learnt) == " Five.\n"
    assert fixed_tokenizer.decode(ids[1:]) == " Q: And three? A: Five.\n"


def test_unknown_template_names_the_close_match():
    with pytest.raises(ValueError, match="did you mean 'plain'"):
        get_template("plian")


def test_image_tokens_are_never_labelled(fixed_tokenizer):
    record = {"image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A red cat."}]}
    for template in ("plain", "v1"):
        ids, labels = encode(fixed_tokenizer, template, record)
        ids, labels = np.array(ids), np.array(labels)
        assert (ids == IMAGE_TOKEN_INDEX).sum() == N_IMG
        assert (labels[ids == IMAGE_TOKEN_INDEX] == IGNORE_INDEX).all()
