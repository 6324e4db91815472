"""The MindFormers cosine-with-warmup schedule and AdamW, checked against formulas written out in numpy."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, nn

from eve_ms.training.config import LRScheduleConfig, OptimizerConfig
from eve_ms.training.optim import build_lr_schedule, build_optimizer, lr_at, optimizer_state


def cosine_with_warmup(step, base_lr, total, warmup_ratio, lr_end=0.0):
    warmup = int(total * warmup_ratio)
    if step >= total:
        return lr_end
    if step < warmup:
        return base_lr * step / warmup
    progress = (step - warmup) / (total - warmup)
    return lr_end + (base_lr - lr_end) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("total,ratio,lr_end", [(200, 0.03, 0.0), (37, 0.1, 1e-5)])
def test_lr_schedule_is_cosine_with_linear_warmup(total, ratio, lr_end):
    schedule = build_lr_schedule(LRScheduleConfig(learning_rate=2e-3, warmup_ratio=ratio, lr_end=lr_end), total)
    for step in sorted({0, 1, int(total * ratio) // 2, int(total * ratio), total // 3, total // 2, total - 1, total}):
        expected = cosine_with_warmup(step, 2e-3, total, ratio, lr_end)
        assert lr_at(schedule, step) == pytest.approx(expected, rel=1e-5, abs=1e-9), step


def test_adamw_update_matches_the_adamw_formula():
    rng = np.random.default_rng(0)
    start = rng.normal(size=5).astype(np.float32)
    param = Parameter(ms.Tensor(start), name="w")
    config = OptimizerConfig(betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1)
    opt = build_optimizer([param], config, learning_rate=0.01)
    p, m, v = start.astype(np.float64), np.zeros(5), np.zeros(5)
    for t in range(1, 5):
        g = rng.normal(size=5)
        opt((ms.Tensor(g.astype(np.float32)),))
        p = p * (1 - 0.01 * 0.1)
        m = 0.9 * m + 0.1 * g
        v = 0.95 * v + 0.05 * g * g
        p = p - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.95**t)) + 1e-8)
    np.testing.assert_allclose(param.asnumpy(), p, atol=1e-6)


def test_only_trainable_parameters_get_optimizer_state():
    net = nn.SequentialCell([nn.Dense(3, 4), nn.Dense(4, 2)])
    for p in net[0].get_parameters():
        p.requires_grad = False
    trainable = net.trainable_params()
    opt = build_optimizer(trainable, OptimizerConfig(), learning_rate=1e-3)
    state = optimizer_state(opt, trainable)
    moments = sorted(n for n in state if n not in ("global_step", "learning_rate"))
    assert moments == sorted([f"adam_m.{p.name}" for p in trainable] + [f"adam_v.{p.name}" for p in trainable])
    with pytest.raises(ValueError, match="frozen"):
        build_optimizer(net.get_parameters(), OptimizerConfig(), learning_rate=1e-3)
