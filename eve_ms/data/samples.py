"""One LLaVA record -> input_ids, labels and pixels, with every way a record can be bad.

The model splices image features by position: the image's place in `input_ids` holds exactly
`num_image_tokens` copies of IMAGE_TOKEN_INDEX (labels IGNORE_INDEX there), so sequence lengths
are static. Text between images and special tokens is tokenized as one string and each token is
labelled from the character span it covers (learnt if any of its characters is in a learnt piece).

Checks, in the order they run (each failure is a `BadSampleError` with a reason code):
structure (object, conversations, turns, roles, turn order, image field, <image> tags, template
shape; cheap, done once when the file is indexed), then length (truncate text at the end, never
cut through image tokens), then the image file (decoded last, only for samples that fit).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from eve_ms.config import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from eve_ms.data.images import ImageProcessor
from eve_ms.data.report import BadSampleError
from eve_ms.data.templates import BOS, EOS, IMAGE, ChatTemplate, Piece, Turn
from eve_ms.data.tokenizer import encode_with_offsets, special_ids

ROLES = ("human", "gpt")


@dataclass
class Conversation:
    """A record after the structural checks."""

    turns: list  # list[Turn], alternating human, gpt, starting with human
    image: Optional[str]  # image path relative to the image folder
    notes: list = field(default_factory=list)  # note codes (report.NOTES) for changes made


@dataclass
class EncodedSample:
    input_ids: np.ndarray  # int32 [n], n <= max_length
    labels: np.ndarray  # int32 [n]
    pixel_values: Optional[np.ndarray]  # float32 [3, H, W] or None (text-only)
    notes: list


def _image_field(record: dict) -> Optional[str]:
    image = record.get("image")
    if image is None or image == "" or image == []:
        return None
    if isinstance(image, list):
        if len(image) > 1:
            raise BadSampleError("too_many_images", f"{len(image)} images; one per sample is supported")
        image = image[0]
    if not isinstance(image, str) or not image:
        raise BadSampleError("bad_image_field", f"`image` must be a path string, got {image!r}")
    return image


def parse_record(record: object, template: ChatTemplate) -> Conversation:
    """Structural checks of one record; the turns and image ready for the template."""
    if not isinstance(record, dict):
        raise BadSampleError("not_an_object", f"expected a JSON object, got {type(record).__name__}")
    raw_turns = record.get("conversations")
    if not isinstance(raw_turns, list) or not raw_turns:
        raise BadSampleError("missing_conversations", "no `conversations` list" if raw_turns is None else
                             f"`conversations` must be a non-empty list, got {raw_turns!r:.80}")
    for number, turn in enumerate(raw_turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(turn.get("value"), str):
            raise BadSampleError("bad_turn", f"turn {number} is not an object with string `from` and `value`: {turn!r:.80}")
        if turn["from"] not in ROLES:
            raise BadSampleError("bad_role", f"turn {number} has role {turn['from']!r}; expected human or gpt")
    image = _image_field(record)
    notes = []
    if raw_turns[0]["from"] == "gpt":
        raw_turns = raw_turns[1:]  # LLaVA's preprocess drops a leading gpt turn
        notes.append("leading_gpt_turn_dropped")
    for number, turn in enumerate(raw_turns):
        if turn["from"] != ROLES[number % 2]:
            raise BadSampleError("bad_turn_order", f"turn {number} is {turn['from']!r}; turns must alternate human, gpt")
    if not any(turn["from"] == "gpt" for turn in raw_turns):
        raise BadSampleError("no_labels", "no gpt turn to learn from")
    tags = [turn["value"].count(IMAGE) for turn in raw_turns]
    if any(n and turn["from"] == "gpt" for n, turn in zip(tags, raw_turns)):
        raise BadSampleError("image_tag_in_reply", "a gpt turn contains the <image> tag")
    if sum(tags) > (1 if image else 0):
        raise BadSampleError("too_many_image_tags", f"{sum(tags)} <image> tags but {1 if image else 0} images")
    image_turn = tags.index(1) if sum(tags) else 0
    if image and not sum(tags):
        notes.append("image_tag_added")
    turns = []
    for number, turn in enumerate(raw_turns):
        has_image = bool(image) and number == image_turn
        text = turn["value"].replace(IMAGE, "").strip() if has_image else turn["value"]
        turns.append(Turn(turn["from"], text, has_image))
    problem = template.check_shape(turns)
    if problem:
        raise BadSampleError("template_mismatch", problem)
    return Conversation(turns, image, notes)


class SampleEncoder:
    """Records -> `EncodedSample`s for one tokenizer, template, image processor and length limit.

    `tokenizer` None checks structure and images only (no lengths); `image_processor` None
    skips images (structure and lengths only).
    """

    def __init__(
        self,
        template: ChatTemplate,
        tokenizer=None,
        num_image_tokens: int = 0,
        max_length: int = 0,
        image_processor: Optional[ImageProcessor] = None,
        image_folder: str = "",
        add_bos: bool = True,
    ):
        self.template = template
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.image_processor = image_processor
        self.image_folder = image_folder
        self.add_bos = add_bos
        self.ids = special_ids(tokenizer) if tokenizer is not None else None

    def validate(self, record: object) -> bool:
        """Structural check for the index: True when the record has an image."""
        return parse_record(record, self.template).image is not None

    def encode_pieces(self, pieces: list[Piece]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and labels of rendered pieces (no truncation)."""
        ids, labels = [], []
        run: list[Piece] = []

        def flush():
            if not run:
                return
            text = "".join(p.text for p in run)
            learnt = np.zeros(len(text) + 1, bool)
            start = 0
            for p in run:
                learnt[start:start + len(p.text)] = p.learnt
                start += len(p.text)
            tokens, offsets = encode_with_offsets(self.tokenizer, text)
            ids.extend(tokens)
            labels.extend(t if learnt[s:max(e, s + 1)].any() else IGNORE_INDEX for t, (s, e) in zip(tokens, offsets))
            run.clear()

        for piece in pieces:
            if piece.special is None:
                run.append(piece)
                continue
            flush()
            if piece.special == IMAGE:
                ids.extend([IMAGE_TOKEN_INDEX] * self.num_image_tokens)
                labels.extend([IGNORE_INDEX] * self.num_image_tokens)
            elif piece.special == BOS:
                if self.add_bos and self.ids.bos is not None:
                    ids.append(self.ids.bos)
                    labels.append(IGNORE_INDEX)
            elif piece.special == EOS:
                ids.append(self.ids.eos)
                labels.append(self.ids.eos if piece.learnt else IGNORE_INDEX)
            else:
                raise ValueError(f"unknown special piece {piece.special!r}")
        flush()
        return np.asarray(ids, np.int32), np.asarray(labels, np.int32)

    def fit(self, ids: np.ndarray, labels: np.ndarray, notes: list) -> tuple[np.ndarray, np.ndarray]:
        """Truncate to max_length at the end, never through image tokens; a sample left without labels is bad."""
        if len(ids) > self.max_length:
            image_positions = np.flatnonzero(ids == IMAGE_TOKEN_INDEX)
            if len(image_positions) and image_positions[-1] >= self.max_length:
                raise BadSampleError(
                    "image_tokens_do_not_fit",
                    f"the image's tokens end at position {image_positions[-1] + 1} > max_length {self.max_length}",
                )
            ids, labels = ids[: self.max_length], labels[: self.max_length]
            notes.append("truncated")
        if not (labels != IGNORE_INDEX).any():
            raise BadSampleError("no_labels", f"no assistant token within max_length {self.max_length}")
        return ids, labels

    def image_path(self, image: str) -> str:
        return os.path.join(self.image_folder, image)

    def encode(self, record: object, load_image: bool = True) -> EncodedSample:
        """Every check and the encoding of one record; raises `BadSampleError` (without file/id: the caller adds them)."""
        conversation = parse_record(record, self.template)
        notes = list(conversation.notes)
        ids = labels = None
        if self.tokenizer is not None:
            ids, labels = self.encode_pieces(self.template.render(conversation.turns))
            ids, labels = self.fit(ids, labels, notes)
        pixels = None
        if conversation.image is not None and load_image and self.image_processor is not None:
            pixels = self.image_processor.load(self.image_path(conversation.image))
        return EncodedSample(ids, labels, pixels, notes)


def encode_prompt(
    tokenizer,
    template: ChatTemplate,
    turns: list[Turn],
    num_image_tokens: int,
    add_bos: bool = True,
) -> np.ndarray:
    """Inference: token ids of a conversation ending in a human turn, up to where the reply starts.

    Uses the same rendering and tokenization as training, so a prompt matches what was learnt.
    """
    if not turns or turns[-1].role != "human":
        raise ValueError("a generation prompt must end with a human turn")
    encoder = SampleEncoder(template, tokenizer, num_image_tokens, add_bos=add_bos)
    ids, _ = encoder.encode_pieces(template.render(turns, generation_prompt=True))
    return ids
