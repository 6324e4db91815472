"""Incremental decoding of one sample's new tokens: stop strings and text that is safe to stream.

After every step the whole reply so far is decoded again (special tokens skipped, no
clean-up of spaces) and searched for the stop strings; the reply ends before the first
stop string found. Streamed text holds back what may still change: a trailing U+FFFD
(the first bytes of a character whose remaining bytes are in tokens not yet generated)
and any tail that could be the start of a stop string. So the streamed pieces add up to
the final text.
"""
from __future__ import annotations

REPLACEMENT_CHARACTER = "\ufffd"


class ReplyText:
    """Decoded text of one reply, updated token by token."""

    def __init__(self, tokenizer, stop_strings: tuple = ()):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.text = ""
        self.emitted = 0  # characters of `text` already handed out
        self.stopped = False

    def _decode(self, token_ids) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _held_back(self, text: str) -> int:
        """Characters at the end of `text` that must not be streamed yet."""
        held = len(text) - len(text.rstrip(REPLACEMENT_CHARACTER))
        visible = text[: len(text) - held]
        prefix = 0
        for stop in self.stop_strings:
            for size in range(min(len(stop) - 1, len(visible)), prefix, -1):
                if visible.endswith(stop[:size]):
                    prefix = size
                    break
        return held + prefix

    def update(self, token_ids) -> str:
        """Decode the reply's tokens so far; returns the new text that is safe to stream."""
        if self.stopped:
            return ""
        text = self._decode(token_ids)
        found = [i for i in (text.find(stop) for stop in self.stop_strings) if i >= 0]
        if found:
            self.text = text[: min(found)]
            self.stopped = True
            return self._emit(len(self.text))
        self.text = text
        return self._emit(len(text) - self._held_back(text))

    def finish(self) -> str:
        """The rest of the text once the reply has ended."""
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        piece = self.text[self.emitted:end]
        self.emitted = end
        return piece
