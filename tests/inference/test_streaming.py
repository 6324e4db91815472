"""Incremental reply text: stop strings, held-back tails, streamed pieces adding up to the text."""
from eve_ms.inference.streaming import ReplyText


class CharTokenizer:
    """Token i decodes to PIECES[i]; "\ufffd" stands for a character whose bytes are incomplete."""

    PIECES = ["He", "llo", " wo", "rld", "\ufffd", "é", "<", "/s", ">", "!"]

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
        text = "".join(self.PIECES[i] for i in ids)
        return text.replace("\ufffdé", "é")  # the second token completes the character


def stream(ids, stops=()):
    reply, pieces = ReplyText(CharTokenizer(), stops), []
    for n in range(1, len(ids) + 1):
        pieces.append(reply.update(ids[:n]))
        if reply.stopped:
            break
    pieces.append(reply.finish())
    return reply, pieces


def test_text_stops_before_the_first_stop_string():
    reply, pieces = stream([0, 1, 2, 3, 9], stops=("wor", "l"))
    assert reply.stopped and reply.text == "He"  # "l" (in "llo") comes first
    assert "".join(pieces) == "He"


def test_a_possible_stop_string_start_is_held_back_until_it_is_decided():
    reply, pieces = stream([0, 6, 7, 9], stops=("</s>",))
    assert pieces[:3] == ["He", "", ""]  # "<", then "</s" could still become "</s>"
    assert not reply.stopped and reply.text == "He</s!" and "".join(pieces) == reply.text


def test_an_incomplete_character_is_not_streamed():
    reply, pieces = stream([0, 4, 5, 9])
    assert pieces[:2] == ["He", ""]
    assert "\ufffd" not in "".join(pieces) and "".join(pieces) == reply.text == "Heé!"
