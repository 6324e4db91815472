"""The VQA answer normalisation and GQA's lighter one, on edge cases worked out by hand."""
import pytest

from eve_ms.eval.normalize import CONTRACTIONS, normalize_short_answer, normalize_vqa_answer


@pytest.mark.parametrize("raw, expected", [
    ("Two dogs.", "2 dogs"),            # number word, trailing period
    ("The  Cat", "cat"),                # article, case, repeated spaces
    ("an apple", "apple"),
    ("none", "0"),
    ("\tten\n", "10"),                  # tabs/newlines
    ("dont", "don't"),                  # contraction regains its apostrophe
    ("isnt it", "isn't it"),
    ("couldnt've", "couldn't've"),
    ("3.5", "3.5"),                     # a period before a digit stays
    ("3.14.", "3.14"),                  # ... one before nothing goes
    ("end.", "end"),
    ("1,000", "1000"),                  # commas are dropped first
    ("yes?", "yes"),
    ("x-ray", "x ray"),                 # a mark touching no space becomes a space
    ("x - ray", "x ray"),               # a mark touching a space is deleted
    ("c/d", "c d"),
    ("(c)", "c"),
    ('"coca cola"', "coca cola"),
    ("hello!!", "hello"),
    ("man's hat", "man 's hat"),        # possessive split off
    ("a/b", "b"),                       # "a" becomes a word of its own, then an article
])
def test_vqa_normalisation_edge_cases(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_deleting_marks_depends_on_any_mark_touching_a_space():
    # "-" touches a space in the second answer, so every "-" there is deleted, not spaced
    assert normalize_vqa_answer("t-shirt") == "t shirt"
    assert normalize_vqa_answer("t-shirt - red") == "tshirt red"


def test_contraction_table_matches_official_spellings():
    assert CONTRACTIONS["dont"] == "don't"
    assert CONTRACTIONS["yall'd've"] == "y'all'd've" and CONTRACTIONS["y'all'dve"] == "y'all'd've"
    assert CONTRACTIONS["twas"] == "'twas"
    assert CONTRACTIONS["somebody'd"] == "somebodyd"  # the official table's own oddity
    assert "lets" not in CONTRACTIONS and "shes" not in CONTRACTIONS  # not in the official table
    assert len(CONTRACTIONS) == 114


@pytest.mark.parametrize("raw, expected", [(" Yes. ", "yes"), ("left...", "left"), ("The left", "the left"),
                                           ("Red", "red")])
def test_gqa_normalisation(raw, expected):
    assert normalize_short_answer(raw) == expected
