"""One record -> ids/labels/pixels: every structural problem, truncation rules, notes."""
import numpy as np
import pytest
from PIL import Image

from eve_ms.config import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from eve_ms.data.images import ImageProcessor
from eve_ms.data.report import SKIP_REASONS, BadSampleError
from eve_ms.data.samples import SampleEncoder, parse_record
from eve_ms.data.templates import get_template

N_IMG = 4


def turns(*pairs):
    return [{"from": who, "value": text} for who, text in pairs]


GOOD = turns(("human", "What is this?"), ("gpt", "A red cat."))

BAD_RECORDS = {
    "not_an_object": ["human", "gpt"],
    "missing_conversations": {"id": "x", "image": "a.png"},
    "bad_turn": {"conversations": [{"from": "human"}, {"from": "gpt", "value": "A red cat."}]},
    "bad_role": {"conversations": turns(("system", "hi"), ("gpt", "A red cat."))},
    "bad_turn_order": {"conversations": turns(("human", "hi"), ("human", "hi"), ("gpt", "A red cat."))},
    "bad_image_field": {"image": 7, "conversations": GOOD},
    "too_many_images": {"image": ["a.png", "b.png"], "conversations": GOOD},
    "too_many_image_tags": {"conversations": turns(("human", "<image>\nWhat is this?"), ("gpt", "A red cat."))},
    "image_tag_in_reply": {"image": "a.png", "conversations": turns(("human", "What?"), ("gpt", "<image> cat"))},
    "no_labels": {"conversations": turns(("human", "What is this?"))},
    "template_mismatch": {"image": "a.png", "conversations": GOOD + GOOD},  # plain takes one round
}


def test_every_structural_reason_is_covered():
    load_time = {"missing_image", "image_decode_error", "image_tokens_do_not_fit", "malformed_json", "invalid_utf8"}
    assert set(BAD_RECORDS) | load_time == set(SKIP_REASONS)


@pytest.mark.parametrize("reason", sorted(BAD_RECORDS))
def test_structural_problem_is_named(reason):
    template = get_template("plain" if reason == "template_mismatch" else "v1")
    with pytest.raises(BadSampleError) as info:
        parse_record(BAD_RECORDS[reason], template)
    assert info.value.reason == reason


def test_two_tags_for_one_image_is_too_many():
    record = {"image": "a.png", "conversations": turns(("human", "<image> and <image>"), ("gpt", "two"))}
    with pytest.raises(BadSampleError, match="too_many_image_tags"):
        parse_record(record, get_template("v1"))


def test_leading_gpt_turn_is_dropped_and_noted():
    conversation = parse_record({"conversations": turns(("gpt", "Hello."), *[(t["from"], t["value"]) for t in GOOD])},
                                get_template("v1"))
    assert [t.role for t in conversation.turns] == ["human", "gpt"]
    assert conversation.notes == ["leading_gpt_turn_dropped"]


def test_image_without_tag_goes_to_the_first_human_turn_and_is_noted():
    conversation = parse_record({"image": "a.png", "conversations": GOOD}, get_template("v1"))
    assert conversation.turns[0].image and not conversation.turns[1].image
    assert conversation.notes == ["image_tag_added"]


def test_image_tag_in_a_later_human_turn_puts_the_image_there():
    record = {"image": "a.png", "conversations": GOOD + turns(("human", "And this? <image>"), ("gpt", "A dog."))}
    conversation = parse_record(record, get_template("v1"))
    assert [t.image for t in conversation.turns] == [False, False, True, False]
    assert conversation.turns[2].text == "And this?"


@pytest.fixture
def encoder(fixed_tokenizer, tmp_path):
    Image.new("RGB", (10, 6), (200, 30, 30)).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    processor = ImageProcessor(8, (0.5,) * 3, (0.5,) * 3)

    def make(max_length=512, template="v1"):
        return SampleEncoder(get_template(template), fixed_tokenizer, N_IMG, max_length, processor, str(tmp_path))

    return make


def image_record(text="What is this?", reply="A red cat.", image="a.png"):
    return {"image": image, "conversations": turns(("human", "<image>\n" + text), ("gpt", reply))}


def test_full_sample_has_pixels_and_image_tokens(encoder):
    sample = encoder().encode(image_record())
    assert sample.pixel_values.shape == (3, 8, 8)
    assert (sample.input_ids == IMAGE_TOKEN_INDEX).sum() == N_IMG
    assert sample.notes == []


def test_long_conversation_is_truncated_at_the_end_keeping_image_tokens(encoder):
    full = encoder().encode(image_record(reply="A red cat. " * 40))
    image_end = int(np.flatnonzero(full.input_ids == IMAGE_TOKEN_INDEX)[-1]) + 1
    limit = image_end + 20  # room for the question and a part of the reply
    cut = encoder(max_length=limit).encode(image_record(reply="A red cat. " * 40))
    assert len(cut.input_ids) == limit and cut.notes == ["truncated"]
    np.testing.assert_array_equal(cut.input_ids, full.input_ids[:limit])
    np.testing.assert_array_equal(cut.labels, full.labels[:limit])
    assert (cut.input_ids == IMAGE_TOKEN_INDEX).sum() == N_IMG
    assert (cut.labels != IGNORE_INDEX).any()


def test_sample_whose_image_tokens_do_not_fit_is_bad(encoder):
    full = encoder().encode(image_record())
    image_end = int(np.flatnonzero(full.input_ids == IMAGE_TOKEN_INDEX)[-1]) + 1
    with pytest.raises(BadSampleError, match="image_tokens_do_not_fit"):
        encoder(max_length=image_end - 1).encode(image_record())
    assert len(encoder(max_length=image_end + 12).encode(image_record()).input_ids) <= image_end + 12


def test_truncation_that_leaves_no_reply_is_bad(encoder):
    long_question = "What is this? " * 30
    full = encoder().encode(image_record(text=long_question))
    first_label = int(np.flatnonzero(full.labels != IGNORE_INDEX)[0])
    with pytest.raises(BadSampleError, match="no_labels"):
        encoder(max_length=first_label).encode(image_record(text=long_question))


def test_missing_and_broken_image_files_are_bad(encoder):
    with pytest.raises(BadSampleError, match="missing_image"):
        encoder().encode(image_record(image="gone.png"))
    with pytest.raises(BadSampleError, match="image_decode_error"):
        encoder().encode(image_record(image="broken.png"))


def test_text_only_sample_has_no_pixels(encoder):
    sample = encoder().encode({"conversations": GOOD})
    assert sample.pixel_values is None and IMAGE_TOKEN_INDEX not in sample.input_ids
