"""Dropout whose mask is a function of an explicit key: the run's seed, the step and the micro-batch.

Why not `nn.Dropout`: in MindSpore 2.9 its CPU kernel (`ops.Dropout`, seeds as primitive
attributes, a generator inside the kernel) draws the same masks in two processes only for the
first five launches of a compiled graph and different ones from then on (measured: 6 dropouts
of [768, 128], `set_seed(0)`, graph mode, 1 or 2 threads, 3 processes: calls 1-5 identical,
calls 6-10 differ), so two runs of the same yaml diverge at step 6-7; and its state lives in the
kernel, where a checkpoint cannot reach it, so a resumed run draws other masks than the run it
continues. The ops that take seed and offset as inputs (`DropoutExt`, `mint.rand_like`, ...)
have no CPU kernel in 2.9 ("kernel ... unregistered"), and `mindspore.Generator`'s seed reads
back wrong inside a graph.

So every `SeededDropout` reads one process-wide key, a non-trainable int64 Parameter of two
32-bit words that the trainer sets before each micro-batch from (seed, step, global micro-batch
index) with `set_random_key`; it is not a parameter of any network (not saved, not loaded).
The mask of a call is then a pure function of (key, the cell's `salt`, element index):

- Ascend: MindSpore's seeded dropout kernel (`func_dropout_ext_op`, what `mindspore.nn.DropoutExt`
  runs) with seed = the key mixed with the salt and offset 0 (not run here: no Ascend device);
- CPU and GPU: keep = lowbias32(lowbias32(index ^ k0) ^ k1) >= p x 2^32, with k0, k1 the key
  words mixed with the salt, computed in uint32 lanes (`lowbias32` is Chris Wellons'
  32-bit integer hash, bias 0.17; reference `numpy_keep_mask`).

Eval mode (`set_train(False)`) and p == 0 return the input as it is, as `nn.Dropout` does.
"""
from __future__ import annotations

import numpy as np

MASK32 = 0xFFFFFFFF
HASH_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)  # lowbias32
SALT_MULTIPLIER = 0x9E3779B9  # golden-ratio increment: spreads consecutive salts over 32 bits
NATIVE_SEEDED_DEVICES = ("Ascend",)  # where DropoutExt (seed and offset as inputs) has a kernel

_KEY = None


def random_key():
    """The process-wide key Parameter (int64 [2], two 32-bit words), created on first use."""
    global _KEY
    if _KEY is None:
        import mindspore as ms
        from mindspore import Parameter

        _KEY = Parameter(ms.Tensor(np.zeros(2, np.int64)), name="eve_ms.random_key", requires_grad=False)
    return _KEY


def key_words(seed: int, step: int, micro_batch: int) -> np.ndarray:
    """The two 32-bit key words of (run seed, optimizer step, global micro-batch index)."""
    words = np.random.SeedSequence([int(seed), int(step), int(micro_batch)]).generate_state(2, np.uint32)
    return words.astype(np.int64)


def set_random_key(seed: int, step: int, micro_batch: int) -> None:
    """Key every SeededDropout's next draws to (seed, step, micro_batch)."""
    import mindspore as ms

    random_key().set_data(ms.Tensor(key_words(seed, step, micro_batch)))


# --------------------------------------------------------------------------- numpy reference


def numpy_lowbias32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.uint32)
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(HASH_MULTIPLIERS[0])
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(HASH_MULTIPLIERS[1])
    return x ^ (x >> np.uint32(16))


def numpy_keep_mask(key: np.ndarray, salt: int, shape: tuple, p: float) -> np.ndarray:
    """The CPU/GPU mask in numpy (uint32 arithmetic): True where the element is kept."""
    with np.errstate(over="ignore"):
        salted = np.uint32((int(salt) * SALT_MULTIPLIER) & MASK32)
        k0 = numpy_lowbias32(np.uint32(key[0]) ^ salted)
        k1 = numpy_lowbias32(np.uint32(key[1]) ^ k0)
        index = np.arange(int(np.prod(shape)), dtype=np.uint64).astype(np.uint32).reshape(shape)
        bits = numpy_lowbias32(numpy_lowbias32(index ^ k0) ^ k1)
    return bits.astype(np.uint64) >= np.uint64(threshold(p))


def threshold(p: float) -> int:
    """Hash values below this are dropped: round(p x 2^32)."""
    return int(round(p * 2.0**32))


# --------------------------------------------------------------------------- the cell


def _cell():
    import mindspore as ms
    from mindspore import nn, ops

    int64, uint32 = ms.int64, ms.uint32

    def shift_xor(x, bits):
        return ops.bitwise_xor(x, ops.bitwise_right_shift(x, ms.Tensor(bits, uint32)))

    def lowbias32(x):
        """In uint32 lanes, whose multiplication wraps modulo 2^32 as the hash needs (checked against numpy's
        uint32 arithmetic: tests/ops/test_seeded_dropout.py). An earlier int64 form emulated the wrap with
        16-bit halves: about 2.5x the ops on twice the bytes per element, in every LoRA layer's mask."""
        x = shift_xor(x, 16) * ms.Tensor(HASH_MULTIPLIERS[0], uint32)
        x = shift_xor(x, 15) * ms.Tensor(HASH_MULTIPLIERS[1], uint32)
        return shift_xor(x, 16)

    class SeededDropout(nn.Cell):
        """Dropout with rate `p` whose mask is a function of the random key and `salt` (module docstring)."""

        def __init__(self, p: float, salt: int, device_target: str | None = None):
            super().__init__()
            if not 0.0 <= p < 1.0:
                raise ValueError(f"dropout rate must be in [0, 1), got {p}")
            from eve_ms.runtime import resolve_device_target

            self.p = float(p)
            self.salt = int(salt)
            self.native = resolve_device_target(device_target or ms.get_context("device_target")) \
                in NATIVE_SEEDED_DEVICES
            self.salted = (self.salt * SALT_MULTIPLIER) & MASK32
            self.threshold = threshold(self.p)
            # not a Cell attribute MindSpore registers: the key is no parameter of the network
            object.__setattr__(self, "_key", random_key())
            if self.native:  # what mindspore.nn.DropoutExt calls, with our seed instead of the global generator's
                from mindspore.ops.auto_generate import func_dropout_ext_op

                self.dropout_ext = func_dropout_ext_op

        def keep_mask(self, x):
            key = ops.cast(self._key, uint32)  # two 32-bit words held in int64
            k0 = lowbias32(ops.bitwise_xor(key[0], ms.Tensor(self.salted, uint32)))
            k1 = lowbias32(ops.bitwise_xor(key[1], k0))
            index = ops.cast(ops.arange(0, x.size, dtype=int64), uint32).reshape(x.shape)  # index mod 2^32
            bits = lowbias32(ops.bitwise_xor(lowbias32(ops.bitwise_xor(index, k0)), k1))
            if self.threshold > MASK32:  # p rounds to 1 in 32 bits: nothing is kept
                return ops.zeros_like(bits).astype(ms.bool_)
            return bits >= ms.Tensor(self.threshold, uint32)

        def construct(self, x):
            if not self.training or self.p == 0.0:
                return x
            if self.native:
                # 62 bits of key and salt (an int64 seed must stay positive)
                key = ops.cast(self._key, uint32)
                k0 = lowbias32(ops.bitwise_xor(key[0], ms.Tensor(self.salted, uint32)))
                k1 = lowbias32(ops.bitwise_xor(key[1], k0))
                seed = ops.cast(k0, int64) * 1073741824 + ops.cast(k1, int64)
                return self.dropout_ext(x, self.p, True, False, seed, ms.Tensor(0, int64))
            return x * ops.cast(self.keep_mask(x), x.dtype) * (1.0 / (1.0 - self.p))

    return SeededDropout


_CLASS = None


def SeededDropout(p: float, salt: int, device_target: str | None = None):  # noqa: N802 (a cell factory)
    """A `SeededDropout` cell (the class is defined on first use: MindSpore is imported only then)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _cell()
    return _CLASS(p, salt, device_target)
