"""StageLoader: routing noise as a function of the sample position, empty image batches for text-only batches."""
import numpy as np
import pytest

from eve_ms.config import EveConfig, VisionConfig
from eve_ms.data.config import DataConfig
from eve_ms.data.dataset import build_loader
from eve_ms.data.tokenizer import conversation_texts, train_bpe_tokenizer
from eve_ms.demo.synthetic import generate
from eve_ms.training.distributed import DistInfo
from eve_ms.training.stage_data import StageLoader

EVE = EveConfig(vision=VisionConfig(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_layers=2,
                                    num_heads=2))
NUM_EVF = 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    paths = generate(str(tmp_path_factory.mktemp("loader")), image_size=32, num_caption=12, num_instruct_images=4,
                     num_eval_images=1, text_only_fraction=1.0)  # instruct: 4 image + 4 text-only samples
    tokenizer = train_bpe_tokenizer(conversation_texts(paths["captions"]) + conversation_texts(paths["instruct"]), 300)
    return paths, tokenizer


def _stage_loader(data, key="captions", rank=0, world=1, accum=1, micro=2, num_evf=NUM_EVF, **options):
    paths, tokenizer = data
    config = DataConfig(data_path=paths[key], image_folder=paths["image_folder"], template="v1", max_length=192,
                        backend="python", **options)
    inner = build_loader(config, EVE, tokenizer, rank, world, accum, batch_size=micro, log=lambda *a: None)
    return StageLoader(inner, num_evf, seed=7, dist=DistInfo(rank, world))


def test_noise_follows_the_sample_position_whatever_the_split_of_the_global_batch(data):
    single = list(_stage_loader(data, world=1, accum=2))  # micro-batches 2s, 2s + 1 of step s
    ranks = [list(_stage_loader(data, rank=r, world=2, accum=1)) for r in (0, 1)]  # rank r: micro 2s + r
    assert len(single) == 6 and len(ranks[0]) == len(ranks[1]) == 3
    for step in range(3):
        for r in (0, 1):
            here, there = single[2 * step + r], ranks[r][step]
            np.testing.assert_array_equal(here["input_ids"], there["input_ids"])
            np.testing.assert_array_equal(here["routing_noise"], there["routing_noise"])
    noise = single[0]["routing_noise"]
    assert noise.shape == (NUM_EVF,) + single[0]["input_ids"].shape and noise.dtype == np.float32
    assert 0.0 <= noise.min() and noise.max() < 1.0
    assert not np.array_equal(noise[0], noise[1])  # each EVF layer draws its own
    assert not np.array_equal(single[0]["routing_noise"], single[1]["routing_noise"])


def test_a_resumed_loader_draws_the_noise_an_uninterrupted_one_draws(data):
    loader = _stage_loader(data)
    epoch0, epoch1 = list(loader), list(loader)
    assert not np.array_equal(epoch0[0]["routing_noise"], epoch1[0]["routing_noise"])  # a new epoch, new noise

    interrupted = _stage_loader(data)
    batches = iter(interrupted)
    for _ in range(4):
        next(batches)
    state = interrupted.state_dict()
    resumed = _stage_loader(data)
    resumed.load_state_dict(state)
    rest = list(resumed) + list(resumed)
    assert len(rest) == len(epoch0) - 4 + len(epoch1)
    for got, expected in zip(rest, epoch0[4:] + epoch1):
        np.testing.assert_array_equal(got["input_ids"], expected["input_ids"])
        np.testing.assert_array_equal(got["routing_noise"], expected["routing_noise"])


def test_text_only_batches_carry_an_empty_image_batch(data):
    batches = list(_stage_loader(data, key="instruct", micro=4))
    modalities = sorted(bool(b["has_image"].all()) for b in batches)
    assert modalities == [False, True]  # grouped by modality: one text batch, one image batch
    for batch in batches:
        pixels = batch["pixel_values"]
        if batch["has_image"].any():
            assert pixels.shape == (4, 3, 32, 32) and np.abs(pixels).sum() > 0
        else:
            assert pixels.shape == (0, 3, 32, 32) and pixels.dtype == np.float32
    # a batch mixing both keeps every sample's pixels (zeros for the text samples)
    mixed = next(iter(_stage_loader(data, key="instruct", micro=8, group_by_modality=False)))
    assert 0 < mixed["has_image"].sum() < 8 and mixed["pixel_values"].shape == (8, 3, 32, 32)


def test_a_dense_stage_gets_no_routing_noise(data):
    batch = next(iter(_stage_loader(data, num_evf=0)))
    assert "routing_noise" not in batch
    assert sorted(batch) == ["attention_mask", "has_image", "input_ids", "labels", "pixel_values"]
