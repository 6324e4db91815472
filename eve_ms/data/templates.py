"""Conversation templates: how a LLaVA conversation becomes text pieces, and which pieces are learnt.

A template renders turns into `Piece`s: text, the image, or a special token (bos/eos). Learnt
pieces (the assistant's replies and their end-of-turn token) get labels; everything else is
IGNORE_INDEX. Templates are data: a new one is one `ChatTemplate` entry in `TEMPLATES`.

Strings follow LLaVA's `llava/conversation.py` and `llava/train/train.py` (also used by MobileVLM):
- `v1` = `conv_vicuna_v1` (SeparatorStyle.TWO): "{system} USER: {q1} ASSISTANT: {a1}</s>USER: {q2}
  ASSISTANT: {a2}</s>", sep " ", sep2 the eos token. As in `preprocess_v1`, the instruction part up
  to and including "ASSISTANT:" is masked; everything after it is learnt: the space (LLaVA's
  `instruction_len - 2` also counts a lone space token as reply), the reply and its eos. A
  generation prompt therefore ends with "ASSISTANT:". With an image, `preprocess_multimodal` puts
  "<image>\\n" at the start of the human turn that had the tag.
- `plain` = `conv_llava_plain` (SeparatorStyle.PLAIN, sep "\\n") with `preprocess_plain`: the human
  turn is replaced by the image alone, then "{caption}\\n"; the caption and its "\\n" are learnt,
  bos and image are not. No eos.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import NamedTuple, Optional

from eve_ms.config import ConfigError

IMAGE = "<image>"  # the tag in LLaVA data; the place the image's tokens go
BOS, EOS = "bos", "eos"  # special tokens a template may place, resolved by the tokenizer


class Piece(NamedTuple):
    """One piece of a rendered conversation: `text`, or `special` (bos | eos | image)."""

    text: str = ""
    special: Optional[str] = None
    learnt: bool = False


class Turn(NamedTuple):
    role: str  # human | gpt
    text: str  # without the <image> tag
    image: bool = False  # the image goes at the start of this (human) turn


@dataclass(frozen=True)
class ChatTemplate:
    """A conversation format. `style` picks the layout; the strings fill it in.

    style "two" (LLaVA SeparatorStyle.TWO): system + sep, then per round
      "{user}: " [image "\\n"] "{question}" sep "{assistant}:" " {reply}" end_of_turn; learnt: " {reply}"
      and end_of_turn.
    style "plain" (LLaVA SeparatorStyle.PLAIN): [image] "{reply}" sep, for exactly one human and one
      gpt turn; the human text is dropped.
    """

    name: str
    style: str
    system: str = ""
    roles: tuple = ("USER", "ASSISTANT")
    sep: str = " "
    end_of_turn: str = EOS  # EOS = the tokenizer's eos token, otherwise literal text

    def render(self, turns: list[Turn], generation_prompt: bool = False) -> list[Piece]:
        """Pieces of the whole conversation. `turns` alternate human, gpt, starting with human.

        `generation_prompt`: the last turn is human and the pieces end where the assistant's reply
        starts (for inference).
        """
        if self.style == "two":
            return self._render_two(turns, generation_prompt)
        if self.style == "plain":
            return self._render_plain(turns, generation_prompt)
        raise ValueError(f"template {self.name!r} has unknown style {self.style!r}")

    def _end(self) -> Piece:
        if self.end_of_turn == EOS:
            return Piece(special=EOS, learnt=True)
        return Piece(self.end_of_turn, learnt=True)

    def _render_two(self, turns: list[Turn], generation_prompt: bool) -> list[Piece]:
        user, assistant = self.roles
        pieces = [Piece(special=BOS), Piece(self.system + self.sep)]
        for turn in turns:
            if turn.role == "human":
                pieces.append(Piece(f"{user}: "))
                if turn.image:
                    pieces += [Piece(special=IMAGE), Piece("\n")]
                pieces.append(Piece(turn.text + self.sep))
            else:
                pieces += [Piece(f"{assistant}:"), Piece(" " + turn.text, learnt=True), self._end()]
        if generation_prompt:
            pieces.append(Piece(f"{assistant}:"))
        return pieces

    def _render_plain(self, turns: list[Turn], generation_prompt: bool) -> list[Piece]:
        pieces = [Piece(special=BOS)]
        if turns[0].image:
            pieces.append(Piece(special=IMAGE))
        if not generation_prompt:
            pieces += [Piece(turns[1].text, learnt=True), Piece(self.sep, learnt=True)]
        return pieces

    def check_shape(self, turns: list[Turn]) -> Optional[str]:
        """Why this template cannot express `turns` (None when it can)."""
        if self.style == "plain" and [t.role for t in turns] != ["human", "gpt"]:
            return f"template {self.name!r} takes exactly one human turn then one gpt turn, got {len(turns)} turns"
        return None


VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

TEMPLATES = {
    "plain": ChatTemplate(name="plain", style="plain", sep="\n"),
    "v1": ChatTemplate(name="v1", style="two", system=VICUNA_V1_SYSTEM, roles=("USER", "ASSISTANT"), sep=" "),
}


def get_template(name: str) -> ChatTemplate:
    if name not in TEMPLATES:
        close = difflib.get_close_matches(name, list(TEMPLATES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown conversation template {name!r}{hint}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name]
