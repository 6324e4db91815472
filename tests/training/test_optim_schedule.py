"""The MindFormers cosine-with-warmup schedule and both AdamW forms, against numpy formulas and torch.optim.AdamW."""
import math

import mindspore as ms
import numpy as np
import pytest
import torch
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


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_update_matches_the_adamw_formula(fused):
    rng = np.random.default_rng(0)
    start = rng.normal(size=5).astype(np.float32)
    param = Parameter(ms.Tensor(start), name="w")
    config = OptimizerConfig(betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1, fused=fused)
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


def test_fused_adamw_equals_torch_adamw_under_a_schedule_in_graph_mode():
    """Several tensors, a warm-up + cosine schedule, eps that matters (tiny gradients), weight decay:
    the fused kernel's folded bias correction against torch.optim.AdamW step by step."""
    rng = np.random.default_rng(1)
    shapes = [(7, 3), (4,), (2, 5, 3)]
    starts = [rng.normal(size=s).astype(np.float32) for s in shapes]
    params = [Parameter(ms.Tensor(x), name=f"p{i}") for i, x in enumerate(starts)]
    total = 12
    schedule = build_lr_schedule(LRScheduleConfig(learning_rate=0.05, warmup_ratio=0.25), total)
    opt = build_optimizer(params, OptimizerConfig(betas=[0.8, 0.9], eps=1e-3, weight_decay=0.2), schedule)

    class Step(nn.Cell):
        def __init__(self, optimizer):
            super().__init__()
            self.optimizer = optimizer

        def construct(self, *grads):
            return self.optimizer(grads)

    step = Step(opt)
    reference = [torch.nn.Parameter(torch.tensor(x, dtype=torch.float64)) for x in starts]
    torch_opt = torch.optim.AdamW(reference, lr=1.0, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.2)
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        for k in range(total):
            grads = [rng.normal(size=s) * (1e-3 if k % 3 == 0 else 1.0) for s in shapes]
            for group in torch_opt.param_groups:
                group["lr"] = cosine_with_warmup(k, 0.05, total, 0.25)
            for p, g in zip(reference, grads):
                p.grad = torch.tensor(g)
            torch_opt.step()
            step(*[ms.Tensor(g.astype(np.float32)) for g in grads])
            for mine, theirs in zip(params, reference):
                np.testing.assert_allclose(mine.asnumpy(), theirs.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    finally:
        ms.set_context(mode=previous)
    assert int(opt.global_step.asnumpy()[0]) == total


@pytest.mark.parametrize("fused", [True, False])
def test_only_trainable_parameters_get_optimizer_state(fused):
    net = nn.SequentialCell([nn.Dense(3, 4), nn.Dense(4, 2)])
    for p in net[0].get_parameters():
        p.requires_grad = False
    trainable = net.trainable_params()
    opt = build_optimizer(trainable, OptimizerConfig(fused=fused), learning_rate=1e-3)
    state = optimizer_state(opt, trainable)
    moments = sorted(n for n in state if n not in ("global_step", "learning_rate"))
    assert moments == sorted([f"adam_m.{p.name}" for p in trainable] + [f"adam_v.{p.name}" for p in trainable])
    assert "global_step" in state
    with pytest.raises(ValueError, match="frozen"):
        build_optimizer(net.get_parameters(), OptimizerConfig(fused=fused), learning_rate=1e-3)


def test_fused_and_mindformers_adamw_keep_the_same_state():
    """What checkpoints save is the same for both forms, so a run can resume with the other one."""
    net = nn.SequentialCell([nn.Dense(3, 4), nn.Dense(4, 2)])
    params = net.trainable_params()
    schedule = build_lr_schedule(LRScheduleConfig(learning_rate=1e-3), 10)
    states = [optimizer_state(build_optimizer(params, OptimizerConfig(fused=fused), schedule), params)
              for fused in (True, False)]
    assert sorted(states[0]) == sorted(states[1])
    for name, value in states[0].items():
        assert value.shape == states[1][name].shape and value.dtype == states[1][name].dtype, name
