"""Image preprocessing against numpy/PIL computations and the Hugging Face SigLIP/CLIP processors."""
import numpy as np
import pytest
from PIL import Image

from eve_ms.data.images import ImageProcessor
from eve_ms.data.report import BadSampleError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalise(rgb_uint8, mean, std):
    """Reference: HWC uint8 -> CHW float, (x / 255 - mean) / std."""
    x = rgb_uint8.astype(np.float64) / 255.0
    return ((x - np.array(mean)) / np.array(std)).transpose(2, 0, 1)


def save(image, path, **kwargs):
    image.save(path, **kwargs)
    return str(path)


@pytest.fixture
def pattern(rng):
    return rng.integers(0, 256, size=(6, 10, 3), dtype=np.uint8)  # H=6, W=10


@pytest.mark.parametrize("orientation, k", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, pattern, orientation, k):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(Image.fromarray(pattern), tmp_path / "o.png", exif=exif)
    opened = ImageProcessor(8, CLIP_MEAN, CLIP_STD).open(path)
    np.testing.assert_array_equal(np.asarray(opened), np.rot90(pattern, k))  # k>0: counter-clockwise


def test_grey_palette_cmyk_and_16_bit_become_rgb(tmp_path, rng):
    proc = ImageProcessor(8, CLIP_MEAN, CLIP_STD)
    grey = rng.integers(0, 256, size=(5, 7), dtype=np.uint8)
    opened = np.asarray(proc.open(save(Image.fromarray(grey, "L"), tmp_path / "l.png")))
    np.testing.assert_array_equal(opened, np.repeat(grey[..., None], 3, axis=2))

    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)
    index = rng.integers(0, 4, size=(5, 7), dtype=np.uint8)
    p_image = Image.fromarray(index, "P")
    p_image.putpalette(palette.flatten().tolist())
    opened = np.asarray(proc.open(save(p_image, tmp_path / "p.png")))
    np.testing.assert_array_equal(opened, palette[index])

    cmyk = rng.integers(0, 256, size=(5, 7, 4), dtype=np.uint8)
    opened = np.asarray(proc.open(save(Image.fromarray(cmyk, "CMYK"), tmp_path / "c.tiff"))).astype(int)
    c = cmyk.astype(np.float64)
    expected = np.rint((255 - c[..., :3]) * (255 - c[..., 3:]) / 255)  # subtractive: (1-C)(1-K)
    assert np.abs(opened - expected).max() <= 1

    deep = rng.integers(0, 65536, size=(5, 7), dtype=np.uint16)
    opened = np.asarray(proc.open(save(Image.fromarray(deep), tmp_path / "i16.png"))).astype(int)
    np.testing.assert_array_equal(opened[..., 0], np.rint(deep / 257.0).astype(int))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_over_the_mean_colour(tmp_path, rng, mode):
    proc = ImageProcessor(8, CLIP_MEAN, CLIP_STD)
    background = np.array([int(255 * m) for m in CLIP_MEAN], np.float64)  # (122, 116, 104)
    rgb = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, size=(4, 6), dtype=np.uint8)
    if mode == "RGBA":
        image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    elif mode == "LA":
        rgb = np.repeat(rgb[..., :1], 3, axis=2)
        image = Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA")
    else:  # palette with one fully transparent entry
        index = rng.integers(0, 2, size=(4, 6), dtype=np.uint8)
        image = Image.fromarray(index, "P")
        image.putpalette([200, 10, 10, 0, 0, 0])
        image.info["transparency"] = 1
        rgb = np.array([[200, 10, 10], [0, 0, 0]], np.uint8)[index]
        alpha = np.where(index == 1, 0, 255).astype(np.uint8)
    opened = np.asarray(proc.open(save(image, tmp_path / "t.png"))).astype(np.float64)
    a = alpha[..., None] / 255.0
    expected = a * rgb + (1 - a) * background
    assert np.abs(opened - expected).max() <= 1


def test_pad_to_square_with_mean_colour_then_normalise():
    proc = ImageProcessor(5, CLIP_MEAN, CLIP_STD, aspect_ratio="pad")
    red = np.zeros((2, 5, 3), np.uint8)
    red[..., 0] = 250
    pixels = proc.preprocess(Image.fromarray(red))
    # LLaVA's expand2square: a 5x2 image pasted at row (5 - 2) // 2 = 1 of a 5x5 mean-coloured square.
    square = np.empty((5, 5, 3), np.uint8)
    square[:] = [122, 116, 104]
    square[1:3] = red
    assert pixels.shape == (3, 5, 5) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, normalise(square, CLIP_MEAN, CLIP_STD), atol=1e-5)


def test_pad_resizes_the_square_with_bicubic(rng):
    proc = ImageProcessor(7, (0.5,) * 3, (0.5,) * 3, aspect_ratio="pad")
    tall = rng.integers(0, 256, size=(12, 8, 3), dtype=np.uint8)
    square = np.full((12, 12, 3), 127, np.uint8)
    square[:, 2:10] = tall
    expected = np.asarray(Image.fromarray(square).resize((7, 7), Image.BICUBIC))
    np.testing.assert_allclose(proc.preprocess(Image.fromarray(tall)), normalise(expected, (0.5,) * 3, (0.5,) * 3), atol=1e-5)


def test_resize_matches_siglip_image_processor(rng):
    from transformers import SiglipImageProcessor

    image = Image.fromarray(rng.integers(0, 256, size=(20, 33, 3), dtype=np.uint8))
    reference = SiglipImageProcessor(size={"height": 16, "width": 16})(image, return_tensors="np")["pixel_values"][0]
    mine = ImageProcessor(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), aspect_ratio="resize").preprocess(image)
    np.testing.assert_allclose(mine, reference, atol=1e-5)


def test_crop_matches_clip_image_processor(rng):
    from transformers import CLIPImageProcessor

    image = Image.fromarray(rng.integers(0, 256, size=(20, 33, 3), dtype=np.uint8))
    hf = CLIPImageProcessor(size={"shortest_edge": 14}, crop_size={"height": 14, "width": 14},
                            image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    reference = hf(image, return_tensors="np")["pixel_values"][0]
    mine = ImageProcessor(14, CLIP_MEAN, CLIP_STD, aspect_ratio="crop").preprocess(image)
    np.testing.assert_allclose(mine, reference, atol=1e-5)


def test_missing_and_undecodable_files_are_bad_samples(tmp_path):
    proc = ImageProcessor(8, CLIP_MEAN, CLIP_STD)
    with pytest.raises(BadSampleError, match="missing_image") as info:
        proc.load(str(tmp_path / "nowhere.png"))
    assert "nowhere.png" in str(info.value)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(BadSampleError, match="image_decode_error") as info:
        proc.load(str(broken))
    assert "broken.jpg" in str(info.value)
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(BadSampleError, match="image_decode_error"):
        proc.load(str(truncated))


def test_from_vision_config_takes_size_and_statistics():
    from eve_ms.config import VisionConfig

    vision = VisionConfig(image_size=32, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    proc = ImageProcessor.from_vision_config(vision, "pad")
    assert proc.shape == (3, 32, 32) and proc.background == (122, 116, 104)
