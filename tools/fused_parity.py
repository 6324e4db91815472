"""Fused-operator parity cases for `tools/parity.py --device_target Ascend` (registered there for Ascend only).

Each case runs one of MindSpore's fused Ascend operators that `llm.fused_ops` selects
(eve_ms/ops/fused.py) inside the eve-ms cell that calls it, in bfloat16, and compares it with the
composed path it replaces, run in float32 on the same bfloat16-representable inputs and weights:

    error = max |fused_bf16 - composed_fp32| / max |composed_fp32|   (real tokens only where padded)

The row's detail also gives the composed path's own bfloat16 error against the same reference, so
a fused operator is judged beside what bfloat16 costs anyway. Tolerances (bfloat16 keeps 8
significant bits: unit roundoff u = 2**-8 = 3.9e-3):

| cases | tolerance | why |
|---|---|---|
| rms_norm, rotary, fast_gelu | 2**-7 = 7.8e-3 (2u) | one rounding of the output, one of the input |
| swiglu, flash_attention (+ grad) | 2e-2 (~5u) | the bfloat16 matmuls around the op round inputs and outputs |
| llm (4 layers, every operator) | 3e-2 | the same roundings through 4 residual layers and the head |

UNVERIFIED ON HARDWARE: written and checked on CPU with stand-in operators
(tests/ops/test_fused_parity.py); the first Ascend run checks the operators themselves.
`FusedCase.dtype` is "bfloat16" for the harness; the CPU test runs the same code in float32.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

BF16_UNIT_ROUNDOFF = 2.0**-8
SINGLE_OP_TOLERANCE = 2 * BF16_UNIT_ROUNDOFF
MATMUL_BLOCK_TOLERANCE = 2e-2
LLM_TOLERANCE = 3e-2
BACKEND = "fused-bf16"


@dataclasses.dataclass(frozen=True)
class FusedCase:
    """`build(dtype, rng, small)` -> (fused(), composed(), real) where each call returns numpy outputs (a list)
    and `real` selects the rows compared ([B, S] bool, or None for all). `small` shrinks the shapes (CPU test)."""

    name: str
    build: Callable
    tolerance: float
    dtype: str = "bfloat16"
    seed: int = 0
    small: bool = False
    requires: tuple = ()

    def run(self, device_target: str):
        import mindspore as ms

        fused, composed_low, real = self.build(getattr(ms, self.dtype), np.random.default_rng(self.seed), self.small)
        # the reference: the composed path in float32, built from the same seed (the same bfloat16 values)
        _, composed_ref, _ = self.build(ms.float32, np.random.default_rng(self.seed), self.small)
        errors, low_errors = [], []
        for got, low, want in zip(fused(), composed_low(), composed_ref()):
            got, low, want = (_select(np.asarray(a, np.float64), real) for a in (got, low, want))
            scale = max(float(np.abs(want).max()), 1e-30)
            errors.append(float(np.abs(got - want).max()) / scale)
            low_errors.append(float(np.abs(low - want).max()) / scale)
        detail = f"relative to max|composed float32|; composed {self.dtype}: {max(low_errors):.3g}"
        yield BACKEND, max(errors), self.tolerance, detail


def _select(array, real):
    return array if real is None else array[real]


# --------------------------------------------------------------------------- helpers


def _tensor(array, dtype):
    """A tensor of `dtype` holding `array` rounded to bfloat16 first, so that every dtype sees the same values."""
    import mindspore as ms

    return ms.Tensor(np.asarray(array, np.float32), ms.float32).astype(ms.bfloat16).astype(dtype)


def _to_dtype(cell, dtype, rng):
    """Random order-one weights, rounded to bfloat16, stored in `dtype` (the same values in every dtype).
    Vectors named `weight` (the norms') scatter around one, biases around zero."""
    import mindspore as ms

    for param in cell.get_parameters():
        shape = param.shape
        scale = 1.0 / np.sqrt(shape[-1]) if len(shape) == 2 else 0.1
        base = 1.0 if len(shape) == 1 and param.name.endswith("weight") else 0.0
        values = (base + scale * rng.standard_normal(shape)).astype(np.float32)
        param.set_data(ms.Tensor(values).astype(ms.bfloat16).astype(ms.float32))
        if dtype != ms.float32:
            param.set_dtype(dtype)
    return cell


def _float(tensor):
    import mindspore as ms

    return tensor.astype(ms.float32).asnumpy()


def _config(**overrides):
    from eve_ms.config import LLMConfig

    fields = dict(vocab_size=512, hidden_size=512, intermediate_size=1376, num_layers=1, num_heads=8,
                  num_kv_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6)
    fields.update(overrides)
    return LLMConfig(**fields)


def _padding_mask(batch, seq, pad, side):
    mask = np.ones((batch, seq), np.int32)
    if side == "left":
        mask[0, :pad] = 0
    else:
        mask[0, seq - pad:] = 0
    return mask


# --------------------------------------------------------------------------- cases


def _rms_norm(dtype, rng, small):
    from eve_ms.models.llm import RMSNorm

    h = 64 if small else 1024
    cells = [_to_dtype(RMSNorm(h, 1e-6, fused=flag), dtype, np.random.default_rng(1)) for flag in (True, False)]
    x = _tensor(3 * rng.standard_normal((2, 64, h)), dtype)
    return (lambda: [_float(cells[0](x))]), (lambda: [_float(cells[1](x))]), None


def _rotary(dtype, rng, small):
    from mindspore import ops

    from eve_ms.models.llm import _apply_rope
    from eve_ms.models.rope import rope_tables
    from eve_ms.ops.fused import ROTARY_MODE_ROTATE_HALF, rotary_layout

    b, s, n, d = (2, 32, 2, 16) if small else (2, 128, 8, 128)
    cos, sin = rope_tables(_config(hidden_size=n * d, num_heads=n, num_kv_heads=n), s)
    positions = np.stack([np.arange(s), np.clip(np.arange(s) - 17, 0, None)])  # the second sample left-padded
    cos_t, sin_t = (_tensor(t[positions][:, None], dtype) for t in (cos, sin))  # [B, 1, S, D], as the decoder's
    cos_t, sin_t = rotary_layout(cos_t, sin_t, b, s)
    x = _tensor(rng.standard_normal((b, s, n, d)), dtype)
    return ((lambda: [_float(ops.rotary_position_embedding(x, cos_t, sin_t, ROTARY_MODE_ROTATE_HALF))]),
            (lambda: [_float(_apply_rope(x, cos_t, sin_t))]), None)


def _ffn(kind):
    def build(dtype, rng, small):
        from eve_ms.models.ffn import FeedForward
        from eve_ms.ops.fused import COMPOSED, FusedOps

        h, inner = (32, 48) if small else (256, 688)
        config = _config(hidden_size=h, intermediate_size=inner, num_heads=2, num_kv_heads=2)
        fused = FusedOps(swiglu=True)
        cells = [_to_dtype(FeedForward(config, kind, flags), dtype, np.random.default_rng(1))
                 for flags in (fused, COMPOSED)]
        x = _tensor(rng.standard_normal((2, 16 if small else 64, h)), dtype)
        return (lambda: [_float(cells[0](x))]), (lambda: [_float(cells[1](x))]), None

    return build


def _fast_gelu(dtype, rng, small):
    from mindspore import ops

    values = np.concatenate([np.linspace(-12, 12, 4001), 4 * rng.standard_normal(4000)]).astype(np.float32)
    x = _tensor(values, dtype)
    exact = _float(x).astype(np.float64)
    formula = exact / (1 + np.exp(-1.702 * exact))  # x * sigmoid(1.702 x): FastGeLU written out
    return (lambda: [_float(ops.fast_gelu(x))]), (lambda: [formula]), None


def _attention(heads, kv_heads, head_dim, side, grad=False):
    def build(dtype, rng, small):
        import mindspore as ms
        from mindspore import ops

        from eve_ms.models.llm import Attention, _mask_bias
        from eve_ms.models.rope import rope_tables
        from eve_ms.ops.fused import COMPOSED, FusedOps

        b, s, d = (2, 24, 16) if small else (2, 128, head_dim)
        config = _config(hidden_size=heads * d, num_heads=heads, num_kv_heads=kv_heads)
        cells = [_to_dtype(Attention(config, flags), dtype, np.random.default_rng(1))
                 for flags in (FusedOps(attention=True, rotary=True), COMPOSED)]
        mask = _padding_mask(b, s, 7 if small else 37, side)
        positions = np.clip(np.cumsum(mask, 1) - 1, 0, None)
        cos, sin = rope_tables(config, s)
        cos_t, sin_t = (_tensor(t[positions][:, None], dtype) for t in (cos, sin))
        allowed = np.tril(np.ones((s, s), bool))[None, None] & mask.astype(bool)[:, None, None, :]
        bias = _mask_bias(ms.Tensor(allowed))
        x = _tensor(rng.standard_normal((b, s, heads * d)), dtype)
        weight = _tensor(rng.standard_normal((b, s, heads * d)), dtype)
        real = mask.astype(bool)

        def call(cell):
            if not grad:
                return lambda: [_float(cell(x, cos_t, sin_t, bias)[0])]

            def loss(inputs):  # padding rows' outputs are not compared, so they carry no gradient
                out = cell(inputs, cos_t, sin_t, bias)[0]
                return (out * weight * ms.Tensor(real[:, :, None]).astype(out.dtype)).astype(ms.float32).sum()

            return lambda: [_float(ops.grad(loss)(x))]

        return call(cells[0]), call(cells[1]), real

    return build


def _llm(dtype, rng, small):
    from mindspore import Tensor

    from eve_ms.models.llm import LLM

    h, s, vocab = (64, 16, 64) if small else (256, 128, 512)
    overrides = dict(hidden_size=h, intermediate_size=h * 11 // 4, num_layers=4, num_heads=4, num_kv_heads=2,
                     layer_split=2, ffn_below_split="series", attn_shortcut_width=32, attention_bias=True,
                     vocab_size=vocab)
    models = [_to_dtype(LLM(_config(fused_ops=setting, **overrides)), dtype, np.random.default_rng(1))
              for setting in ("on", "off")]
    for model in models:
        model.set_train(False)
    ids = Tensor(rng.integers(0, vocab, (2, s)).astype(np.int32))
    mask = _padding_mask(2, s, 5 if small else 29, "left")
    return ((lambda: [_float(models[0](ids, Tensor(mask)))]), (lambda: [_float(models[1](ids, Tensor(mask)))]),
            mask.astype(bool))


def fused_parity_cases(dtype: str = "bfloat16", small: bool = False) -> list:
    """The cases, in `dtype` (the harness: bfloat16); `small` shapes for the CPU test."""
    cases = [
        ("fused/rms_norm", _rms_norm, SINGLE_OP_TOLERANCE),
        ("fused/rotary_position_embedding", _rotary, SINGLE_OP_TOLERANCE),
        ("fused/fast_gelu", _fast_gelu, SINGLE_OP_TOLERANCE),
        ("fused/swiglu", _ffn("swiglu"), MATMUL_BLOCK_TOLERANCE),
        ("fused/flash_attention-gqa-left-padding", _attention(8, 2, 64, "left"), MATMUL_BLOCK_TOLERANCE),
        ("fused/flash_attention-mha-right-padding", _attention(4, 4, 128, "right"), MATMUL_BLOCK_TOLERANCE),
        ("fused/flash_attention-grad", _attention(8, 2, 64, "left", grad=True), MATMUL_BLOCK_TOLERANCE),
        ("fused/llm-pangu-layout", _llm, LLM_TOLERANCE),
    ]
    return [FusedCase(name, build, tolerance, dtype, seed, small)
            for seed, (name, build, tolerance) in enumerate(cases)]
