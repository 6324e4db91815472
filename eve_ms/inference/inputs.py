"""What a user hands to the model, made ready for `Generator`: chat prompts as token ids, images as pixels.

Prompts use the same template rendering and tokenization as training (`encode_prompt`), ending
where the assistant's reply starts; an image's place holds `config.num_image_tokens` image
tokens. Images go through the training pipeline's `ImageProcessor`, so a missing or
undecodable file is a `BadSampleError` whose message names the file.
"""
from __future__ import annotations

import os

import numpy as np

from eve_ms.config import EveConfig
from eve_ms.data.images import ImageProcessor, to_rgb
from eve_ms.data.samples import encode_prompt
from eve_ms.data.templates import Turn, get_template


def image_processor_for(config: EveConfig, aspect_ratio: str = "pad") -> ImageProcessor:
    return ImageProcessor.from_vision_config(config.vision, aspect_ratio)


def load_pixels(processor: ImageProcessor, image) -> np.ndarray | None:
    """Pixels [3, S, S] of an image given as None, a file path or a PIL image (None stays None)."""
    if image is None:
        return None
    if isinstance(image, (str, os.PathLike)):
        return processor.load(os.fspath(image))
    from PIL import Image

    if isinstance(image, Image.Image):
        return processor.preprocess(to_rgb(image, processor.background))
    raise TypeError(f"an image must be None, a file path or a PIL image, got {type(image).__name__}")


def chat_prompt_ids(tokenizer, config: EveConfig, turns: list[Turn], template: str = "v1",
                    add_bos: bool = True) -> np.ndarray:
    """Token ids of a conversation that ends with a human turn, up to where the reply starts."""
    return encode_prompt(tokenizer, get_template(template), turns, config.num_image_tokens, add_bos=add_bos)
