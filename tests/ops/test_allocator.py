"""The MindSpore TokenAllocator against the numpy reference: expert, slot and counts equal exactly."""
import mindspore as ms
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eve_ms.ops.allocator import TokenAllocator, allocate_tokens, combine_indices, dispatch_indices
from eve_ms.ops.token_allocation import STRATEGIES, allocate_reference, compute_capacity

PROPERTY_SETTINGS = settings(max_examples=35, deadline=None, derandomize=True,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def allocation_cases(draw, strategy=None, num_tokens=None):
    """Random allocation inputs, biased towards ties: quantised probabilities and noise."""
    strategy = strategy or draw(st.sampled_from(STRATEGIES))
    t = num_tokens or draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    levels = draw(st.sampled_from([1, 2, 4, 8, 0]))  # 0: continuous softmax probabilities
    if levels:
        p_vision = (rng.integers(0, levels + 1, t) / levels).astype(np.float32)
        probs = np.stack([np.float32(1) - p_vision, p_vision], axis=1).astype(np.float32)
    else:
        logits = rng.normal(0, 2, (t, 2))
        probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    is_image = rng.random(t) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    valid = rng.random(t) < draw(st.sampled_from([1.0, 0.8, 0.4]))
    noise_levels = draw(st.sampled_from([2, 4, 16, 0]))
    noise = (rng.integers(0, noise_levels, t) / noise_levels if noise_levels else rng.random(t)).astype(np.float32)
    # W on the noise grid (ties noise == W), the ends 0 and 1, and a value float32 rounds down
    ratio = draw(st.sampled_from([0.0, 0.25, 0.5, 1.0, 0.1, 0.3]))
    return {
        "strategy": strategy,
        "probs": probs,
        "is_image": is_image,
        "valid": valid,
        "noise": noise,
        "capacity_factor": draw(st.sampled_from([0.2, 0.5, 1.0, 1.5, 3.0])),
        "min_capacity": draw(st.integers(0, 5)),
        "beta": draw(st.sampled_from([0.0, 0.25, 1.0, 2.5])),
        "redistribute_ratio": ratio,
    }


def _reference(case):
    return allocate_reference(case["probs"], case["is_image"], case["valid"], case["noise"],
                              strategy=case["strategy"], capacity_factor=case["capacity_factor"],
                              min_capacity=case["min_capacity"], beta=case["beta"],
                              redistribute_ratio=case["redistribute_ratio"])


def _allocator(case, num_tokens=None):
    return TokenAllocator(num_tokens or len(case["noise"]), case["strategy"], case["capacity_factor"],
                          case["min_capacity"], case["beta"], case["redistribute_ratio"])


def _run(allocator, case):
    expert, slot, counts = allocator(ms.Tensor(case["probs"]), ms.Tensor(case["is_image"]),
                                     ms.Tensor(case["valid"]), ms.Tensor(case["noise"]))
    return expert.asnumpy(), slot.asnumpy(), counts.asnumpy()


def _assert_matches_reference(expert, slot, counts, ref):
    np.testing.assert_array_equal(expert, ref["expert"])
    np.testing.assert_array_equal(slot, ref["slot"])
    np.testing.assert_array_equal(counts, [*ref["kept"], ref["dropped"], ref["redistributed"]])
    assert expert.dtype == slot.dtype == counts.dtype == np.int32


def _assert_invariants(expert, slot, counts, valid, capacity):
    """What every allocation must satisfy, whatever the inputs."""
    assert np.all(expert[~valid] == -1) and np.all(slot[~valid] == -1), "padding was allocated"
    assert np.all((expert == -1) == (slot == -1))
    for e in range(2):
        slots = np.sort(slot[expert == e])
        assert len(slots) <= capacity, f"expert {e} holds {len(slots)} tokens > capacity {capacity}"
        np.testing.assert_array_equal(slots, np.arange(len(slots)))  # exactly 0..kept-1, no gap, no repeat
        assert counts[e] == len(slots)
    assert counts[2] == valid.sum() - counts[0] - counts[1] >= 0
    assert 0 <= counts[3] <= counts[0] + counts[1]


def _dispatch_by_numpy(expert, slot, capacity):
    num_tokens = len(expert)
    table = np.full((2, capacity), num_tokens, np.int32)
    for token in np.flatnonzero(expert >= 0):
        table[expert[token], slot[token]] = token
    return table


@pytest.mark.parametrize("strategy", STRATEGIES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_allocator_equals_reference_exactly(strategy, data):
    case = data.draw(allocation_cases(strategy=strategy))
    ref = _reference(case)
    allocator = _allocator(case)
    assert allocator.capacity == ref["capacity"]
    expert, slot, counts = _run(allocator, case)
    _assert_matches_reference(expert, slot, counts, ref)
    _assert_invariants(expert, slot, counts, case["valid"], allocator.capacity)
    _assert_invariants(ref["expert"], ref["slot"], np.array([*ref["kept"], ref["dropped"], ref["redistributed"]]),
                       case["valid"], ref["capacity"])
    table = allocator.dispatch_indices(ms.Tensor(expert), ms.Tensor(slot)).asnumpy()
    np.testing.assert_array_equal(table, _dispatch_by_numpy(ref["expert"], ref["slot"], ref["capacity"]))
    if ref["redistributed"] > 0:
        # redistribution only fills spare slots: it never keeps fewer tokens than W = 0
        without = dict(case, redistribute_ratio=0.0)
        assert np.sum(expert >= 0) >= np.sum(_run(_allocator(without), without)[0] >= 0)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(case=allocation_cases(strategy="img_gbpr"), ratio=st.sampled_from([0.25, 0.5, 1.0]))
def test_reference_redistribution_never_keeps_fewer_tokens(case, ratio):
    kept = [np.sum(_reference(dict(case, redistribute_ratio=w))["expert"] >= 0) for w in (0.0, ratio)]
    assert kept[1] >= kept[0]


def test_ties_go_to_the_lower_token_index_whatever_the_sort_does():
    # 40 equal priorities: only the tie rule decides, so a non-stable sort would show
    t = 40
    case = {"strategy": "gbpr", "probs": np.tile(np.float32([0.25, 0.75]), (t, 1)), "is_image": np.zeros(t, bool),
            "valid": np.ones(t, bool), "noise": np.zeros(t, np.float32), "capacity_factor": 0.5,
            "min_capacity": 0, "beta": 1.0, "redistribute_ratio": 0.5}
    expert, slot, _ = _run(_allocator(case), case)
    np.testing.assert_array_equal(expert, [1] * 10 + [-1] * 30)
    np.testing.assert_array_equal(slot[:10], np.arange(10))


def test_large_batches_use_wide_keys_and_stay_exact():
    # img_gbpr ranks 2T scores: T = 19000 puts the sort keys past int32
    rng = np.random.default_rng(3)
    t = 19000
    p_vision = (rng.integers(0, 64, t) / 64).astype(np.float32)
    case = {"strategy": "img_gbpr", "probs": np.stack([1 - p_vision, p_vision], 1).astype(np.float32),
            "is_image": rng.random(t) < 0.7, "valid": rng.random(t) < 0.95,
            "noise": rng.random(t).astype(np.float32), "capacity_factor": 1.0, "min_capacity": 4, "beta": 0.25,
            "redistribute_ratio": 0.5}
    ref = _reference(case)
    assert ref["redistributed"] > 0 and ref["dropped"] > 0
    _assert_matches_reference(*_run(_allocator(case), case), ref)


class _AllStrategies(ms.nn.Cell):
    """One graph for the three strategies: graph-mode tests pay one compile per token count."""

    def __init__(self, num_tokens, **kwargs):
        super().__init__()
        self.allocators = ms.nn.CellList([TokenAllocator(num_tokens, s, **kwargs) for s in STRATEGIES])

    def construct(self, probs, is_image, valid, noise):
        return tuple(allocator(probs, is_image, valid, noise) for allocator in self.allocators)


def test_graph_mode_equals_reference_on_fixed_cases(graph_mode):
    rng = np.random.default_rng(11)
    params = {"capacity_factor": 0.7, "min_capacity": 1, "beta": 0.5, "redistribute_ratio": 0.5}
    for num_tokens in (16, 7):
        allocators = _AllStrategies(num_tokens, **params)
        for _ in range(4):
            p_vision = (rng.integers(0, 5, num_tokens) / 4).astype(np.float32)
            case = {"probs": np.stack([1 - p_vision, p_vision], 1).astype(np.float32),
                    "is_image": rng.random(num_tokens) < 0.5, "valid": rng.random(num_tokens) < 0.85,
                    "noise": (rng.integers(0, 4, num_tokens) / 4).astype(np.float32), **params}
            outputs = allocators(*(ms.Tensor(case[k]) for k in ("probs", "is_image", "valid", "noise")))
            for strategy, (expert, slot, counts) in zip(STRATEGIES, outputs):
                ref = _reference(dict(case, strategy=strategy))
                _assert_matches_reference(expert.asnumpy(), slot.asnumpy(), counts.asnumpy(), ref)


def test_combine_indices_point_each_token_at_its_output_row():
    expert = np.array([1, -1, 0, 1, 0], np.int32)
    slot = np.array([0, -1, 1, 1, 0], np.int32)
    rows = combine_indices(ms.Tensor(expert), ms.Tensor(slot), 3).asnumpy()
    # rows of concat(expert 0's 3 slots, expert 1's 3 slots, zero row)
    np.testing.assert_array_equal(rows, [3, 6, 1, 4, 0])
    np.testing.assert_array_equal(dispatch_indices(ms.Tensor(expert), ms.Tensor(slot), 3).asnumpy(),
                                  [[4, 2, 5], [0, 3, 5]])


def test_allocate_tokens_takes_the_capacity_it_is_given():
    t = 6
    probs = np.tile(np.float32([0.1, 0.9]), (t, 1))
    args = [ms.Tensor(a) for a in (probs, np.zeros(t, bool), np.ones(t, bool), np.zeros(t, np.float32))]
    expert, _, counts = allocate_tokens(*args, strategy="gbpr", capacity=2)
    np.testing.assert_array_equal(expert.asnumpy(), [1, 1, -1, -1, -1, -1])
    np.testing.assert_array_equal(counts.asnumpy(), [0, 2, 4, 0])
    assert compute_capacity(t, 1.5, 4) == 5


def test_wrong_token_count_and_bad_arguments_raise():
    allocator = TokenAllocator(8, "gbpr")
    probs = ms.Tensor(np.full((6, 2), 0.5, np.float32))
    flags = ms.Tensor(np.zeros(6, bool))
    with pytest.raises(ValueError, match="built for 8 tokens"):
        allocator(probs, flags, flags, ms.Tensor(np.zeros(6, np.float32)))
    with pytest.raises(ValueError, match="unknown strategy"):
        TokenAllocator(8, "top2")
    with pytest.raises(ValueError, match="redistribute_ratio"):
        TokenAllocator(8, "img_gbpr", redistribute_ratio=-0.1)
    with pytest.raises(ValueError, match="capacity_factor"):
        TokenAllocator(8, "gbpr", capacity_factor=0)


def test_other_backends_delegate_to_the_native_kernel():
    rng = np.random.default_rng(8)
    t = 12
    p_vision = (rng.integers(0, 5, t) / 4).astype(np.float32)
    case = {"strategy": "img_gbpr", "probs": np.stack([1 - p_vision, p_vision], 1).astype(np.float32),
            "is_image": rng.random(t) < 0.6, "valid": rng.random(t) < 0.9,
            "noise": (rng.integers(0, 4, t) / 4).astype(np.float32), "capacity_factor": 0.6, "min_capacity": 0,
            "beta": 1.0, "redistribute_ratio": 0.75}
    allocator = TokenAllocator(t, "img_gbpr", 0.6, 0, 1.0, 0.75, backend="cpu")
    assert allocator.kernel is not None and allocator.kernel.capacity == allocator.capacity
    _assert_matches_reference(*_run(allocator, case), _reference(case))


NON_FINITE = np.float32([np.nan, np.inf, -np.inf])


def _poison(case, rng, share):
    """The case with a NaN / inf in one or both entries of about `share` of the rows (padding ones too)."""
    probs = case["probs"].copy()
    rows = np.flatnonzero(rng.random(len(probs)) < share)
    for row in rows:
        columns = [[0], [1], [0, 1]][rng.integers(3)]
        probs[row, columns] = rng.choice(NON_FINITE, len(columns))
    return dict(case, probs=probs), rows


@pytest.mark.parametrize("strategy", STRATEGIES)
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_non_finite_rows_are_dropped_and_counted_like_the_reference(strategy, data):
    clean = data.draw(allocation_cases(strategy=strategy))
    case, rows = _poison(clean, np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))),
                         data.draw(st.sampled_from([0.1, 0.3, 1.0])))
    expert, slot, counts = _run(_allocator(case), case)
    _assert_matches_reference(expert, slot, counts, _reference(case))
    poisoned_valid = np.zeros(len(expert), bool)
    poisoned_valid[rows] = case["valid"][rows]
    assert np.all(expert[rows] == -1) and np.all(slot[rows] == -1)
    # everything else is allocated as if those tokens were padding; they are counted as dropped
    as_padding = _reference(dict(clean, valid=case["valid"] & ~poisoned_valid))
    np.testing.assert_array_equal(expert, as_padding["expert"])
    np.testing.assert_array_equal(slot, as_padding["slot"])
    assert counts[2] == as_padding["dropped"] + poisoned_valid.sum()


def test_graph_mode_drops_non_finite_rows_like_the_reference(graph_mode):
    rng = np.random.default_rng(12)
    params = {"capacity_factor": 0.8, "min_capacity": 1, "beta": 0.5, "redistribute_ratio": 0.5}
    num_tokens = 16
    allocators = _AllStrategies(num_tokens, **params)
    for _ in range(3):
        p_vision = (rng.integers(0, 5, num_tokens) / 4).astype(np.float32)
        clean = {"probs": np.stack([1 - p_vision, p_vision], 1).astype(np.float32),
                 "is_image": rng.random(num_tokens) < 0.6, "valid": rng.random(num_tokens) < 0.9,
                 "noise": (rng.integers(0, 4, num_tokens) / 4).astype(np.float32), **params}
        case, rows = _poison(clean, rng, 0.3)
        assert len(rows) > 0
        outputs = allocators(*(ms.Tensor(case[k]) for k in ("probs", "is_image", "valid", "noise")))
        for strategy, (expert, slot, counts) in zip(STRATEGIES, outputs):
            _assert_matches_reference(expert.asnumpy(), slot.asnumpy(), counts.asnumpy(),
                                      _reference(dict(case, strategy=strategy)))
            assert np.all(expert.asnumpy()[rows] == -1)
