"""EveTrainNetwork: the trainer's contract on top of EveForCausalLM (loss pieces, per-layer token success rate)."""
import mindspore as ms
import numpy as np
import pytest

from eve_ms.config import IGNORE_INDEX, EveConfig, EVFConfig, LLMConfig, VisionConfig
from eve_ms.models.eve import EveForCausalLM
from eve_ms.models.evf import NUM_ROUTING_STATS
from eve_ms.training.eve_network import DENSE_INPUT_KEYS, EVF_INPUT_KEYS, EveTrainNetwork, routing_record

VISION = VisionConfig(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2)
LLM = LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                max_position_embeddings=64)


def _model(evf: bool):
    # capacity 0.5 and no minimum: the allocation must drop tokens, so the rate is below 1
    evf_config = EVFConfig(enabled=True, capacity_factor=0.5, min_capacity=0, kernel="composed") if evf else EVFConfig()
    ms.set_seed(3)
    model = EveForCausalLM(EveConfig(vision=VISION, llm=LLM, evf=evf_config))
    model.set_train(True)  # as the trainer sets it: the training capacity factor applies
    return model


def _batch(rng, config, with_image: bool, b=2, s=12):
    ids = rng.integers(4, config.llm.vocab_size, size=(b, s)).astype(np.int32)
    if with_image:
        ids[:, 1:1 + config.num_image_tokens] = config.image_token_index
    mask = np.ones((b, s), np.int32)
    mask[1, -3:] = 0
    labels = np.where(mask == 1, ids, IGNORE_INDEX).astype(np.int32)
    labels[ids == config.image_token_index] = IGNORE_INDEX
    pixels = rng.normal(size=(b, 3, 32, 32)).astype(np.float32)
    noise = rng.random((1, b, s), dtype=np.float32)  # 2 layers, alternate: one EVF layer (layer 0)
    return ids, mask, labels, pixels, noise


def test_network_returns_each_evf_layers_routing_counts_and_the_record_their_rates(rng):
    model = _model(evf=True)
    network = EveTrainNetwork(model)
    assert network.input_keys == EVF_INPUT_KEYS
    ids, mask, labels, pixels, noise = [ms.Tensor(a) for a in _batch(rng, model.config, with_image=True)]
    loss_sum, num_targets, aux, counts = network(ids, mask, labels, pixels, noise)
    _, ref_loss, ref_targets, ref_aux, stats = model.forward(ids, mask, pixels, labels, noise)
    stats = stats.asnumpy()
    assert counts.shape == (NUM_ROUTING_STATS,)  # one EVF layer
    np.testing.assert_array_equal(counts.asnumpy(), stats.reshape(-1))
    assert stats[0, 0] == mask.asnumpy().sum()
    assert stats[0, 5] == 2 * model.config.num_image_tokens  # image tokens of the two samples

    # two micro-batches' summed counts -> rates of the sums, and counts split by modality
    record = routing_record(2 * counts.asnumpy(), ["layer_0"])
    expected = (stats[0, 1] + stats[0, 2]) / stats[0, 0]  # (kept_language + kept_vision) / valid
    assert record["token_success_rate"]["layer_0"] == pytest.approx(expected, rel=1e-6)
    assert 0.0 < expected < 1.0  # capacity 0.5: tokens were dropped
    text, image = record["routing"]["layer_0"]["text"], record["routing"]["layer_0"]["image"]
    assert image["valid"] == 2 * stats[0, 5] and text["valid"] + image["valid"] == 2 * stats[0, 0]
    for modality in (text, image):
        assert modality["kept_language"] + modality["kept_vision"] + modality["dropped"] == modality["valid"]
    assert text["dropped"] + image["dropped"] == 2 * stats[0, 3]

    assert float(loss_sum.asnumpy()) == pytest.approx(float(ref_loss.asnumpy()), rel=1e-6)
    assert float(num_targets.asnumpy()) == float(ref_targets.asnumpy())
    assert float(aux.asnumpy()) == pytest.approx(model.config.evf.aux_loss_alpha * float(ref_aux.asnumpy()), rel=1e-6)


def test_an_empty_image_batch_skips_the_vision_tower_without_changing_the_loss(rng):
    model = _model(evf=False)
    network = EveTrainNetwork(model)
    assert network.input_keys == DENSE_INPUT_KEYS
    ids, mask, labels, pixels, _ = [ms.Tensor(a) for a in _batch(rng, model.config, with_image=False)]
    empty = ms.Tensor(np.zeros((0, 3, 32, 32), np.float32))
    skipped = network(ids, mask, labels, empty)
    encoded = network(ids, mask, labels, ms.Tensor(np.zeros((2, 3, 32, 32), np.float32)))
    for a, b in zip(skipped[:3], encoded[:3]):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    assert skipped[3].shape == (0,)
    # the network does read the pixels when the batch has images
    ids_img, mask_img, labels_img, pixels_img, _ = [ms.Tensor(a) for a in _batch(rng, model.config, with_image=True)]
    first = network(ids_img, mask_img, labels_img, pixels_img)[0].asnumpy()
    second = network(ids_img, mask_img, labels_img, pixels_img * 2)[0].asnumpy()
    assert first != second
