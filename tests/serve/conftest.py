"""Fixtures of the server tests: the tiny EVF checkpoint of the inference tests, a picture, and one
`eve-ms serve` process on a free loopback port that the test modules here share."""
import base64
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))  # tiny_eve, shared with those tests
from tiny_eve import CORPUS, build_model  # noqa: E402
from serve_setup import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, running_server  # noqa: E402


@pytest.fixture(scope="session")
def serve_checkpoint(tmp_path_factory):
    from eve_ms.checkpoint_dir import save_eve_checkpoint
    from eve_ms.data.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(CORPUS * 4, vocab_size=400, save_dir=str(tmp_path_factory.mktemp("tokenizer")))
    model = build_model(len(tokenizer))
    directory = str(tmp_path_factory.mktemp("serve") / "tiny-eve")
    save_eve_checkpoint(model, model.config, directory, tokenizer=tokenizer)
    return directory


@pytest.fixture(scope="session")
def picture(tmp_path_factory):
    """(path, data URL) of a small PNG."""
    from PIL import Image

    path = tmp_path_factory.mktemp("images") / "picture.png"
    rgb = (np.random.default_rng(5).random((20, 28, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(path)
    return str(path), "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="session")
def server(serve_checkpoint, tmp_path_factory):
    """Base URL of the server every test module here talks to (local files allowed, small image limits)."""
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    with running_server(serve_checkpoint, log, "--allow-local-files", "--max-image-bytes", str(MAX_IMAGE_BYTES),
                        "--max-image-pixels", str(MAX_IMAGE_PIXELS), "--max-batch", "8") as url:
        yield url
