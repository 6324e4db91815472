"""SeededDropout: its mask is a pure function of (key, salt, element index), the numpy reference's."""
import mindspore as ms
import numpy as np
import pytest

from eve_ms.ops.seeded_dropout import SeededDropout, key_words, numpy_keep_mask, set_random_key


def test_mask_is_the_numpy_reference_and_kept_values_are_rescaled(any_mode):
    dropout = SeededDropout(0.25, salt=3)
    dropout.set_train(True)
    set_random_key(seed=0, step=5, micro_batch=1)
    out = dropout(ms.Tensor(np.full((7, 33), 2.0, np.float32))).asnumpy()
    keep = numpy_keep_mask(key_words(0, 5, 1), 3, (7, 33), 0.25)
    np.testing.assert_array_equal(out != 0, keep)
    np.testing.assert_allclose(out[keep], 2.0 / 0.75, rtol=1e-6)


def test_the_same_key_gives_the_same_mask_and_another_key_or_salt_another():
    def mask(seed, step, micro, salt):
        dropout = SeededDropout(0.5, salt=salt)
        dropout.set_train(True)
        set_random_key(seed, step, micro)
        return dropout(ms.Tensor(np.ones((64, 64), np.float32))).asnumpy() != 0

    reference = mask(0, 1, 0, 0)
    assert np.array_equal(mask(0, 1, 0, 0), reference)
    for other in [(1, 1, 0, 0), (0, 2, 0, 0), (0, 1, 1, 0), (0, 1, 0, 1)]:
        agreement = float((mask(*other) == reference).mean())
        assert 0.45 < agreement < 0.55, (other, agreement)  # independent masks agree on half the elements


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_drop_rate_is_p(p):
    dropout = SeededDropout(p, salt=0)
    dropout.set_train(True)
    set_random_key(7, 1, 0)
    dropped = float((dropout(ms.Tensor(np.ones((1000, 1000), np.float32))).asnumpy() == 0).mean())
    assert abs(dropped - p) < 5 * np.sqrt(p * (1 - p) / 1e6)


def test_eval_mode_and_rate_zero_are_the_identity():
    x = ms.Tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
    dropout = SeededDropout(0.5, salt=0)
    dropout.set_train(False)
    np.testing.assert_array_equal(dropout(x).asnumpy(), x.asnumpy())
    zero = SeededDropout(0.0, salt=0)
    zero.set_train(True)
    np.testing.assert_array_equal(zero(x).asnumpy(), x.asnumpy())


def test_gradient_is_the_mask_over_keep_probability(graph_mode):
    dropout = SeededDropout(0.3, salt=2)
    dropout.set_train(True)
    set_random_key(0, 3, 0)

    def total(x):
        return dropout(x).sum()

    grad = ms.grad(total)(ms.Tensor(np.ones((16, 8), np.float32))).asnumpy()
    keep = numpy_keep_mask(key_words(0, 3, 0), 2, (16, 8), 0.3)
    np.testing.assert_allclose(grad, keep / 0.7, rtol=1e-6)


def test_the_key_is_no_parameter_of_the_network():
    assert list(SeededDropout(0.1, salt=0).get_parameters()) == []


def test_device_path_native_seeded_kernel_on_ascend_only():
    assert SeededDropout(0.1, salt=0, device_target="Ascend").native
    assert not SeededDropout(0.1, salt=0, device_target="GPU").native
    assert not SeededDropout(0.1, salt=0, device_target="CPU").native
