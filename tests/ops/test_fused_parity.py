"""tools/fused_parity.py, the Ascend-only fused-operator cases of tools/parity.py, run on CPU.

No NPU here: the fused operators are replaced by differentiable stand-ins in MindSpore ops, written
from their MindSpore 2.9 docs, and the cases run in float32. This checks that every case builds,
calls the operator it names with arguments the docs allow, compares the rows it should, and fails
when the fused side is wrong; the operators themselves are checked by the first Ascend run.
"""
import importlib.util
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import ops

from eve_ms.models import llm as llm_module
from eve_ms.models.llm import Attention
from eve_ms.ops.fused import COMPOSED, FusedOps

REPO = Path(__file__).resolve().parents[2]
ALL_ON = FusedOps(attention=True, rotary=True, rms_norm=True, swiglu=True)


@pytest.fixture
def fused_parity(monkeypatch):
    """tools/fused_parity.py, loaded as tools/parity.py loads it."""
    spec = importlib.util.spec_from_file_location("eve_fused_parity", REPO / "tools" / "fused_parity.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def _rotate_half(x):
    half = x.shape[-1] // 2
    return ops.cat((-x[..., half:], x[..., :half]), -1)


class Ops:
    """Differentiable stand-ins; `scale_error` perturbs the attention scale to show a wrong fused side fails."""

    def __init__(self, scale_error=1.0):
        self.scale_error = scale_error
        self.calls = {}

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def flash_attention_score(self, query, key, value, head_num, real_shift=None, drop_mask=None, padding_mask=None,
                              attn_mask=None, prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None, keep_prob=1.0,
                              scalar_value=1.0, pre_tokens=2147483647, next_tokens=2147483647, inner_precise=0,
                              input_layout="BSH", sparse_mode=0):
        self._count("flash_attention_score")
        assert input_layout == "BSND" and sparse_mode == 0 and keep_prob == 1.0 and attn_mask.dtype == ms.uint8
        b, s, n1, d = query.shape
        n2 = key.shape[2]
        assert head_num == n1 and n1 % n2 == 0 and d % 16 == 0 and attn_mask.shape == (b, 1, s, key.shape[1])
        k = ops.repeat_interleave(key, n1 // n2, 2)  # query head j reads kv head j // (n1 / n2)
        v = ops.repeat_interleave(value, n1 // n2, 2)
        q, k, v = (ops.transpose(t, (0, 2, 1, 3)) for t in (query, k, v))
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * (scalar_value * self.scale_error)
        scores = ops.where(attn_mask.astype(ms.bool_), ops.full((), -1e30, dtype=scores.dtype), scores)
        out = ops.matmul(ops.softmax(scores, -1), v)
        return ops.transpose(out, (0, 2, 1, 3))

    def rotary_position_embedding(self, x, cos, sin, mode=0):
        self._count("rotary_position_embedding")
        b, s, n, d = x.shape
        assert mode == 0 and cos.shape in ((1, s, 1, d), (b, s, 1, d)) and sin.shape == cos.shape
        return x * cos + _rotate_half(x) * sin

    def rms_norm(self, x, gamma, epsilon=1e-6):
        self._count("rms_norm")
        assert x.dtype == gamma.dtype
        rstd = ops.rsqrt(ops.mean(x * x, -1, keep_dims=True) + epsilon)
        return x * rstd * gamma, rstd

    def swiglu(self, input, dim=-1):  # noqa: A002
        self._count("swiglu")
        a, b = ops.split(input, input.shape[dim] // 2, dim)
        return a * ops.sigmoid(a) * b


@pytest.fixture
def cpu_stand_ins(monkeypatch):
    def install(stand_in):
        for name in ("flash_attention_score", "rotary_position_embedding", "rms_norm", "swiglu"):
            monkeypatch.setattr(ops, name, getattr(stand_in, name))
        monkeypatch.setattr(Attention, "flash_in_float32", True)
        # what select_fused_ops gives on Ascend: on -> every operator, off -> none
        monkeypatch.setattr(llm_module, "select_fused_ops",
                            lambda config: ALL_ON if config.fused_ops == "on" else COMPOSED)
        return stand_in

    return install


def test_every_case_runs_its_operator_and_matches_the_composed_path(cpu_stand_ins, fused_parity):
    stand_in = cpu_stand_ins(Ops())
    cases = fused_parity.fused_parity_cases("float32", small=True)
    assert len({case.name for case in cases}) == len(cases) == 8
    for case in cases:
        before = dict(stand_in.calls)
        rows = list(case.run("Ascend"))
        assert len(rows) == 1
        backend, error, tolerance, detail = rows[0]
        assert backend == "fused-bf16" and tolerance == case.tolerance and "composed float32" in detail
        assert error <= 1e-5, (case.name, error)  # float32 stand-ins: only rounding separates the two sides
        used = {name for name, count in stand_in.calls.items() if count > before.get(name, 0)}
        expected = {
            "fused/rms_norm": {"rms_norm"},
            "fused/rotary_position_embedding": {"rotary_position_embedding"},
            "fused/fast_gelu": set(),  # FastGeLU is ops.fast_gelu on every device: compared with its formula
            "fused/swiglu": {"swiglu"},
            "fused/llm-pangu-layout": {"flash_attention_score", "rotary_position_embedding", "rms_norm", "swiglu"},
        }.get(case.name, {"flash_attention_score", "rotary_position_embedding"})
        assert used == expected, case.name


def test_a_wrong_fused_attention_fails_its_cases(cpu_stand_ins, fused_parity):
    cpu_stand_ins(Ops(scale_error=1.5))
    for case in fused_parity.fused_parity_cases("float32", small=True):
        if "flash_attention" in case.name:
            _, error, tolerance, _ = next(iter(case.run("Ascend")))
            assert error > tolerance, case.name


def test_tolerances_are_the_stated_bfloat16_bounds(fused_parity):
    module = fused_parity
    cases = {case.name: case for case in module.fused_parity_cases()}
    assert all(case.dtype == "bfloat16" for case in cases.values())
    assert module.SINGLE_OP_TOLERANCE == 2 * 2.0**-8
    assert cases["fused/rms_norm"].tolerance == module.SINGLE_OP_TOLERANCE
    assert cases["fused/flash_attention-grad"].tolerance == module.MATMUL_BLOCK_TOLERANCE == 2e-2
    assert cases["fused/llm-pangu-layout"].tolerance == module.LLM_TOLERANCE == 3e-2


def test_the_harness_registers_the_fused_cases_for_ascend_only(parity, capsys):
    assert parity.main(["--device_target", "Ascend", "--list", "--cases", "^fused/"]) == 0
    listed = capsys.readouterr().out.split()
    assert len(listed) == 8 and "fused/flash_attention-gqa-left-padding" in listed
    parity.CASES.clear()
    assert parity.main(["--device_target", "CPU", "--list"]) == 0
    assert not [name for name in capsys.readouterr().out.split() if name.startswith("fused/")]
    np.testing.assert_equal(len(parity.CASES) > 0, True)
