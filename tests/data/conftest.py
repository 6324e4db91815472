"""Shared fixtures of the data tests: a fixed tiny tokenizer and small generated data sets."""
import json
import os

import pytest

from eve_ms.data.templates import VICUNA_V1_SYSTEM
from eve_ms.data.tokenizer import train_bpe_tokenizer

# Every word the exact-id tests use appears here often enough to become one whole token.
FIXED_CORPUS = [
    VICUNA_V1_SYSTEM + " USER: What is this? ASSISTANT: A red cat.",
    "USER: What is two plus two? ASSISTANT: Four.",
    "USER: And three? ASSISTANT: Five.",
    "A red cat.\n",
] * 20


@pytest.fixture(scope="session")
def fixed_corpus():
    return list(FIXED_CORPUS)


@pytest.fixture(scope="session")
def fixed_tokenizer():
    return train_bpe_tokenizer(FIXED_CORPUS, vocab_size=2000)


@pytest.fixture(scope="session")
def fixed_tokenizer_dir(fixed_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    fixed_tokenizer.save_pretrained(str(path))
    return str(path)


def write_json(path, records, jsonl=False):
    with open(path, "w", encoding="utf-8") as fh:
        if jsonl:
            fh.writelines(json.dumps(r) + "\n" for r in records)
        else:
            json.dump(records, fh, indent=1)
    return str(path)


COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle")


def make_shapes_dataset(out_dir, num_image, num_text=0, kind="chat", image_size=24, seed=0, jsonl=False):
    """A small LLaVA-format data set: coloured shapes with captions or questions, plus text-only sums.

    Returns (data_path, image_folder); image paths in the records are relative to the folder.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder = os.path.join(out_dir, "images")
    os.makedirs(folder, exist_ok=True)
    records = []
    for i in range(num_image):
        shape, colour = SHAPES[rng.integers(2)], list(COLOURS)[rng.integers(len(COLOURS))]
        image = Image.new("RGB", (image_size, image_size), (250, 250, 250))
        box = (image_size // 4, image_size // 4, 3 * image_size // 4, 3 * image_size // 4)
        (ImageDraw.Draw(image).rectangle if shape == "square" else ImageDraw.Draw(image).ellipse)(box, fill=COLOURS[colour])
        image.save(os.path.join(folder, f"img_{i:03d}.png"))
        if kind == "caption":
            turns = [("human", "<image>"), ("gpt", f"A {colour} {shape}.")]
        else:
            turns = [("human", "<image>\nWhat shape is in the image?"), ("gpt", f"It is a {shape}.")]
            if rng.integers(2):
                turns += [("human", f"What colour is the {shape}?"), ("gpt", f"The {shape} is {colour}.")]
        records.append({"id": f"shape-{i:03d}", "image": f"img_{i:03d}.png",
                        "conversations": [{"from": w, "value": v} for w, v in turns]})
    for i in range(num_text):
        a, b = (int(x) for x in rng.integers(0, 10, size=2))
        records.append({"id": f"sum-{i:03d}", "conversations": [
            {"from": "human", "value": f"What is {a} plus {b}?"}, {"from": "gpt", "value": f"{a} plus {b} is {a + b}."}]})
    records = [records[i] for i in rng.permutation(len(records))]
    return write_json(os.path.join(out_dir, f"{kind}.jsonl" if jsonl else f"{kind}.json"), records, jsonl), folder


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """(data_path, image_folder, tokenizer): 14 image + 6 text-only chat samples."""
    from eve_ms.data.tokenizer import conversation_texts

    root = str(tmp_path_factory.mktemp("shapes"))
    data_path, folder = make_shapes_dataset(root, num_image=14, num_text=6, kind="chat", seed=3)
    tokenizer = train_bpe_tokenizer(conversation_texts(data_path) * 5, vocab_size=1000)
    return data_path, folder, tokenizer


@pytest.fixture
def make_dataset():
    return make_shapes_dataset
