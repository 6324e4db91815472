"""A chat-completions request made ready for the engine: prompt ids, pixels and a GenerationConfig.

The conversation becomes the same `Turn`s and the same template rendering as `eve-ms chat`
(`encode_prompt`, ending where the assistant's reply starts); a system message replaces the
template's system text. The image goes at the start of the user turn that carries it (LLaVA's
"<image>\\n"). Images come as data URLs, or as file URLs when the server allows local files;
the server never fetches anything from the network. Every problem is a `BadRequest` naming the
request field (`messages.2.content.1.image_url.url`), answered with a 4xx.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import os
import urllib.parse
from dataclasses import dataclass
from typing import Optional

import numpy as np

from eve_ms.data.report import DataError
from eve_ms.data.samples import encode_prompt
from eve_ms.data.templates import Turn
from eve_ms.inference.sampling import GenerationConfig

MAX_STOP_STRINGS = 4  # as the OpenAI API


class BadRequest(ValueError):
    def __init__(self, param: Optional[str], message: str, status: int = 400):
        super().__init__(message)
        self.param, self.message, self.status = param, message, status


@dataclass(frozen=True)
class Limits:
    """What the server accepts, from its command line."""

    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000  # width x height; PIL's own bomb check is near 179M
    allow_local_files: bool = False
    default_max_tokens: int = 256  # when a request sets none (cut to the room the prompt leaves)


@dataclass
class Prepared:
    ids: np.ndarray
    pixels: Optional[np.ndarray]
    config: GenerationConfig
    prompt_tokens: int


def _text(content, param: str, allow_image: bool) -> tuple[str, list[tuple[str, str]]]:
    """(the text parts joined by newlines, [(param, url)] of the image parts)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts, images = [], []
    for j, part in enumerate(content):
        if part.type == "text":
            texts.append(part.text)
        elif not allow_image:
            raise BadRequest(f"{param}.{j}", "only user messages may hold images")
        else:
            images.append((f"{param}.{j}.image_url.url", part.image_url.url))
    return "\n".join(texts), images


def conversation(messages) -> tuple[Optional[str], list[Turn], Optional[tuple[str, str]]]:
    """(system text or None, turns alternating human/gpt and ending human, (param, url) of the image or None)."""
    system, turns, image = [], [], None
    for i, message in enumerate(messages):
        param = f"messages.{i}"
        if message.role in ("system", "developer"):
            if turns:
                raise BadRequest(f"{param}.role", "system messages must come before the conversation")
            system.append(_text(message.content, f"{param}.content", False)[0])
            continue
        text, images = _text(message.content, f"{param}.content", message.role == "user")
        role = "human" if message.role == "user" else "gpt"
        expected = "human" if not turns or turns[-1].role == "gpt" else "gpt"
        if role != expected:
            raise BadRequest(f"{param}.role", f"expected a {'user' if expected == 'human' else 'assistant'} message: "
                             "user and assistant messages alternate, starting with a user message")
        for where, url in images:
            if image is not None:
                raise BadRequest(where, f"the model takes one image per conversation; {image[0]} holds one already")
            image = (where, url)
        turns.append(Turn(role, text, bool(images)))
    if not turns or turns[-1].role != "human":
        raise BadRequest("messages", "the conversation must end with a user message")
    return ("\n".join(system) if system else None), turns, image


def _image_bytes(param: str, url: str, limits: Limits) -> bytes:
    too_big = f"the image is over the server's limit of {limits.max_image_bytes} bytes"
    if url.startswith("data:"):
        header, comma, payload = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise BadRequest(param, "a data URL must be base64: data:image/<type>;base64,<data>")
        if len(payload) * 3 // 4 > limits.max_image_bytes + 2:  # checked before decoding
            raise BadRequest(param, too_big, 413)
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as err:
            raise BadRequest(param, f"the data URL is not valid base64: {err}") from err
    if url.startswith("file:"):
        if not limits.allow_local_files:
            raise BadRequest(param, "file URLs are refused (start the server with --allow-local-files)")
        path = urllib.parse.unquote(urllib.parse.urlparse(url).path)
        if not os.path.isfile(path):
            raise BadRequest(param, f"image file not found: {path}")
        if os.path.getsize(path) > limits.max_image_bytes:
            raise BadRequest(param, too_big, 413)
        with open(path, "rb") as f:
            return f.read()
    raise BadRequest(param, "an image must be a data: URL (or a file: URL with --allow-local-files); "
                            "the server fetches nothing from the network")


def load_image(processor, param: str, url: str, limits: Limits) -> np.ndarray:
    """Pixels [3, S, S]; decoded as `ImageProcessor.open` decodes a file (upright, RGB on the background)."""
    from PIL import Image, ImageOps

    from eve_ms.data.images import to_rgb

    data = _image_bytes(param, url, limits)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise BadRequest(param, f"the image has {width}x{height} pixels, over the server's limit of "
                                        f"{limits.max_image_pixels}", 413)
            image.load()
            image = to_rgb(ImageOps.exif_transpose(image), processor.background)
    except BadRequest:
        raise
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise BadRequest(param, f"cannot decode the image: {type(err).__name__}: {err}") from err
    return processor.preprocess(image)


def generation_config(request, max_new_tokens: int) -> GenerationConfig:
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise BadRequest("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
    if any(not s for s in stops):
        raise BadRequest("stop", "stop strings must not be empty")
    return GenerationConfig(
        max_new_tokens=max_new_tokens, temperature=1.0 if request.temperature is None else request.temperature,
        top_k=request.top_k, top_p=1.0 if request.top_p is None else request.top_p, seed=request.seed,
        stop_strings=tuple(stops),
    )


def prepare(request, tokenizer, config, template, processor, limits: Limits) -> Prepared:
    """The request's prompt ids, pixels and generation settings, or a `BadRequest`."""
    system, turns, image = conversation(request.messages)
    if system is not None:
        if template.style != "two":
            raise BadRequest("messages.0", f"template {template.name!r} has no system prompt")
        template = dataclasses.replace(template, system=system)
    problem = template.check_shape(turns)
    if problem:
        raise BadRequest("messages", problem)
    pixels = load_image(processor, *image, limits) if image is not None else None
    try:
        ids = encode_prompt(tokenizer, template, turns, config.num_image_tokens, add_bos=True)
    except DataError as err:
        raise BadRequest("messages", str(err)) from err
    ids = np.asarray(ids)
    positions = config.llm.max_position_embeddings
    room = positions - len(ids)
    if room < 1:
        raise BadRequest("messages", f"the prompt takes {len(ids)} tokens and leaves no room for a reply in "
                                     f"the model's {positions} positions")
    wanted = request.max_tokens or request.max_completion_tokens
    field = "max_tokens" if request.max_tokens else "max_completion_tokens"
    if wanted is not None and wanted > room:
        raise BadRequest(field, f"{field}={wanted} with a prompt of {len(ids)} tokens is beyond the model's "
                                f"context of {positions} positions (at most {room} here)")
    return Prepared(ids, pixels, generation_config(request, wanted or min(limits.default_max_tokens, room)), len(ids))
