"""The numpy reference of DESIGN section 3 on cases worked out by hand."""
import numpy as np
import pytest

from eve_ms.ops.token_allocation import allocate_reference, aux_loss_reference, compute_capacity


def _probs(p_vision):
    p1 = np.asarray(p_vision, np.float32)
    return np.stack([1 - p1, p1], axis=1).astype(np.float32)


def test_capacity_formula():
    assert compute_capacity(10, 1.5, 4) == 8  # ceil(7.5)
    assert compute_capacity(4, 1.5, 4) == 4  # min_capacity, bounded by T
    assert compute_capacity(2, 1.5, 4) == 2  # never more than T
    assert compute_capacity(100, 0.1, 4) == 5
    assert compute_capacity(100, 0.01, 4) == 4


def test_gbpr_keeps_highest_probability_tokens_and_fills_slots_in_priority_order():
    probs = _probs([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    out = allocate_reference(probs, np.zeros(6), np.ones(6), np.zeros(6), strategy="gbpr",
                             capacity_factor=1.0, min_capacity=0)
    assert out["capacity"] == 3
    np.testing.assert_array_equal(out["expert"], [1, 1, 1, -1, 0, 0])
    np.testing.assert_array_equal(out["slot"], [0, 1, 2, -1, 1, 0])
    np.testing.assert_array_equal(out["kept"], [2, 3])
    assert out["dropped"] == 1 and out["redistributed"] == 0


@pytest.mark.parametrize("noise_of_overflow, expected_expert, redistributed", [(0.3, 0, 1), (0.7, -1, 0)])
def test_img_gbpr_prior_and_redistribution(noise_of_overflow, expected_expert, redistributed):
    probs = _probs([0.3, 0.4, 0.2, 0.6, 0.1, 0.7])
    is_image = np.array([1, 1, 1, 1, 0, 0], bool)
    noise = np.array([0.9, 0.9, noise_of_overflow, 0.9, 0.9, 0.9], np.float32)
    out = allocate_reference(probs, is_image, np.ones(6), noise, strategy="img_gbpr",
                             capacity_factor=1.0, min_capacity=0, beta=1.0, redistribute_ratio=0.5)
    # Image tokens all prefer the vision expert (prior), text tokens the language expert,
    # even token 5 whose router probability favours vision.
    np.testing.assert_array_equal(out["expert"][[0, 1, 3, 4, 5]], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(out["slot"][[3, 1, 0]], [0, 1, 2])  # S = 1.6, 1.4, 1.3
    np.testing.assert_array_equal(out["slot"][[4, 5]], [0, 1])  # S = 1.9, 1.3
    assert out["expert"][2] == expected_expert
    assert out["slot"][2] == (2 if expected_expert == 0 else -1)  # continues the language expert's slots
    assert out["redistributed"] == redistributed
    assert out["dropped"] == 1 - redistributed


def test_ties_go_to_expert_zero_and_to_the_lower_token_index():
    out = allocate_reference(_probs([0.5] * 4), np.zeros(4), np.ones(4), np.full(4, 0.25), strategy="random",
                             capacity_factor=1.0, min_capacity=0)
    np.testing.assert_array_equal(out["expert"], [0, 0, -1, -1])
    np.testing.assert_array_equal(out["slot"], [0, 1, -1, -1])


def test_padding_never_competes_or_counts():
    probs = _probs([0.9, 0.99, 0.8, 0.7])
    valid = np.array([1, 0, 1, 1], bool)
    out = allocate_reference(probs, np.zeros(4), valid, np.zeros(4), strategy="gbpr",
                             capacity_factor=1.0, min_capacity=0)
    assert out["expert"][1] == -1 and out["slot"][1] == -1
    np.testing.assert_array_equal(out["expert"], [1, -1, 1, -1])
    assert out["dropped"] == 1  # token 3; the padding token is not a drop


def test_random_priority_is_the_noise():
    probs = _probs([0.9, 0.8, 0.7, 0.6])
    noise = np.array([0.1, 0.9, 0.5, 0.7], np.float32)
    out = allocate_reference(probs, np.zeros(4), np.ones(4), noise, strategy="random",
                             capacity_factor=1.0, min_capacity=0)
    np.testing.assert_array_equal(out["expert"], [-1, 1, -1, 1])
    np.testing.assert_array_equal(out["slot"], [-1, 0, -1, 1])


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "topk"}, "unknown strategy"),
    ({"strategy": "gbpr", "capacity_factor": 0.0}, "capacity_factor"),
    ({"strategy": "img_gbpr", "redistribute_ratio": 1.5}, "redistribute_ratio"),
])
def test_invalid_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        allocate_reference(_probs([0.5] * 4), np.zeros(4), np.ones(4), np.zeros(4), **kwargs)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="is_image"):
        allocate_reference(_probs([0.5] * 4), np.zeros(3), np.ones(4), np.zeros(4), strategy="gbpr")


def test_aux_loss_formula_by_hand():
    probs = _probs([0.8, 0.6, 0.1, 0.3])
    expert = np.array([1, 1, 0, -1])
    valid = np.array([1, 1, 1, 0], bool)
    # F = (1/3, 2/3); G = (mean(0.2, 0.4, 0.9), mean(0.8, 0.6, 0.1)) = (0.5, 0.5)
    assert aux_loss_reference(probs, expert, valid) == pytest.approx(1 / 3 * 0.5 + 2 / 3 * 0.5, abs=1e-7)


@pytest.mark.parametrize("strategy", ["random", "gbpr", "img_gbpr"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_row_is_dropped_and_the_rest_allocate_as_if_it_were_padding(strategy, bad):
    rng = np.random.default_rng(3)
    probs = _probs(rng.random(12))
    is_image = rng.random(12) < 0.5
    noise = rng.random(12).astype(np.float32)
    valid = np.ones(12, bool)
    poisoned = probs.copy()
    poisoned[[2, 7], 1] = bad
    kwargs = dict(strategy=strategy, capacity_factor=1.0, min_capacity=0)
    out = allocate_reference(poisoned, is_image, valid, noise, **kwargs)
    as_padding = valid.copy()
    as_padding[[2, 7]] = False
    expected = allocate_reference(probs, is_image, as_padding, noise, **kwargs)
    np.testing.assert_array_equal(out["expert"], expected["expert"])
    np.testing.assert_array_equal(out["slot"], expected["slot"])
    assert out["expert"][2] == out["expert"][7] == -1
    assert out["dropped"] == expected["dropped"] + 2  # counted as dropped, unlike padding
