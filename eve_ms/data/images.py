"""Image preprocessing for a vision encoder: decode, orient, convert to RGB, square, resize, normalise.

Steps, in order:
1. decode with PIL and apply the EXIF orientation (photos from cameras are often stored rotated);
2. convert to RGB: 16-bit grey is scaled to 8 bits, transparent images are composited over the
   mean colour (the same "no information" colour as the padding), other modes (L, P, CMYK, ...)
   use PIL's conversion;
3. `aspect_ratio`: "pad" = LLaVA's `expand2square` with the mean colour (int(255 * mean)), then
   resize to size x size; "resize" = resize to size x size (distorts); "crop" = shortest edge to
   size, then centre crop (CLIP's processor);
4. bicubic resampling (what the CLIP and SigLIP processors use), scale to [0, 1], subtract mean,
   divide by std, channels first: float32 [3, size, size].
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from eve_ms.data.report import BadSampleError

_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(image: Image.Image, background: tuple) -> Image.Image:
    """RGB version of `image`; transparent pixels become `background` (an RGB 0..255 tuple)."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float64).clip(0, 65535) / 257.0
        return Image.fromarray(np.rint(grey).astype(np.uint8), "L").convert("RGB")
    transparent = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if transparent:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def expand_to_square(image: Image.Image, background: tuple) -> Image.Image:
    """LLaVA's expand2square: pad the short side equally (extra pixel at the end) with `background`."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


@dataclass(frozen=True)
class ImageProcessor:
    """Turns an image file into the encoder's pixel tensor (see the module docstring)."""

    image_size: int
    image_mean: tuple
    image_std: tuple
    aspect_ratio: str = "pad"  # pad | resize | crop

    @classmethod
    def from_vision_config(cls, vision, aspect_ratio: str = "pad") -> "ImageProcessor":
        return cls(vision.image_size, tuple(vision.image_mean), tuple(vision.image_std), aspect_ratio)

    @property
    def background(self) -> tuple:
        return tuple(int(255 * m) for m in self.image_mean)

    @property
    def shape(self) -> tuple:
        return (3, self.image_size, self.image_size)

    def open(self, path: str) -> Image.Image:
        """Decoded, upright RGB image; a missing or undecodable file is a `BadSampleError`."""
        if not os.path.isfile(path):
            raise BadSampleError("missing_image", f"image file not found: {path}")
        try:
            with Image.open(path) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
                return to_rgb(image, self.background)
        except Exception as err:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
            raise BadSampleError("image_decode_error", f"cannot decode image {path}: {type(err).__name__}: {err}") from err

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 [3, size, size], normalised."""
        size = self.image_size
        if self.aspect_ratio == "pad":
            image = expand_to_square(image, self.background).resize((size, size), Image.BICUBIC)
        elif self.aspect_ratio == "resize":
            image = image.resize((size, size), Image.BICUBIC)
        elif self.aspect_ratio == "crop":
            width, height = image.size
            new_size = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
            image = image.resize(new_size, Image.BICUBIC)
            left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
            image = image.crop((left, top, left + size, top + size))
        else:
            raise ValueError(f"unknown aspect_ratio {self.aspect_ratio!r} (expected pad, resize, crop)")
        pixels = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
        pixels = (pixels - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def load(self, path: str) -> np.ndarray:
        return self.preprocess(self.open(path))
