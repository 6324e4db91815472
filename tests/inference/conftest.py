"""Fixtures of the inference tests: the tiny EVF model, its BPE tokenizer and its checkpoint folder."""
import numpy as np
import pytest

from tiny_eve import CORPUS, build_model


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    from eve_ms.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(CORPUS * 4, vocab_size=400, save_dir=str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="session")
def evf_model(tokenizer):
    return build_model(len(tokenizer))


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory, evf_model, tokenizer):
    from eve_ms.checkpoint_dir import save_eve_checkpoint

    directory = str(tmp_path_factory.mktemp("checkpoint"))
    save_eve_checkpoint(evf_model, evf_model.config, directory, tokenizer=tokenizer)
    return directory


@pytest.fixture
def image_file(tmp_path):
    from PIL import Image

    path = tmp_path / "picture.png"
    rgb = (np.random.default_rng(5).random((20, 28, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(path)
    return str(path)
