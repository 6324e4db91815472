"""Answer normalisation of the standard VQA evaluation, and the lighter one GQA uses.

`normalize_vqa_answer` follows the answer processing of the official VQA / EvalAI
evaluation as the TextVQA evaluator (the one LLaVA and MobileVLM report with) applies it
to both predictions and ground truth:
  1. lower-case; drop commas and question marks; split the possessive "'s" off its word;
     newlines and tabs become spaces;
  2. punctuation: each mark in `PUNCTUATION` is deleted when it touches a space somewhere
     in the answer (or a comma sits between digits), else replaced by a space; a period
     is deleted unless a digit follows it (the official pattern means a look-behind but is
     written as a look-ahead, so "3.5" keeps its point and "1.2." loses the last one);
  3. words: number words zero..ten (and "none") become digits, the articles a/an/the are
     dropped, and apostrophe-less contractions get their apostrophe back ("dont" ->
     "don't").
"""
from __future__ import annotations

import re

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d),+(?=\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})


def _contractions() -> dict[str, str]:
    # The official table lists apostrophe-less spellings of these forms: the bare word for
    # a one-apostrophe form ("dont" -> "don't"), and each spelling with exactly one
    # apostrophe missing for the longer ones ("couldnt've", "couldn'tve" -> "couldn't've").
    # Its entries with capitals ("Im") can never match lower-cased text and are left out,
    # as are its identity entries ("let's" -> "let's").
    forms = (
        "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
        "haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't "
        "mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't she'd've "
        "should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've "
        "someone'll someone's something'd something'd've something'll that's there'd there'd've "
        "there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't "
        "what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's "
        "who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've "
        "you'd you'd've you'll you're you've"
    ).split()
    table: dict[str, str] = {}
    for form in forms:
        cuts = [i for i, ch in enumerate(form) if ch == "'"]
        for cut in cuts:
            table[form[:cut] + form[cut + 1:]] = form
    # Irregular entries of the official table.
    table.update({
        "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
        "somebody'd": "somebodyd",  # sic: the official table maps this one the other way
    })
    return table


CONTRACTIONS = _contractions()


def _process_punctuation(text: str) -> str:
    out = text
    commas_in_numbers = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or commas_in_numbers:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def _process_words(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_vqa_answer(answer: str) -> str:
    """The standard VQA answer normalisation (see the module docstring)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_words(_process_punctuation(text))


def normalize_short_answer(answer: str) -> str:
    """GQA's comparison form: trimmed, trailing periods removed, lower case."""
    return answer.strip().rstrip(".").strip().lower()
