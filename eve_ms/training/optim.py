"""Optimizer and learning-rate schedule, both taken from MindFormers.

AdamW is `mindformers.core.optim.AdamW` (PyTorch's AdamW: bias-corrected moments, decoupled
weight decay; runs in graph and PyNative mode on every device target). The schedule is built
by MindFormers' registry from the `lr_schedule` section, e.g. `CosineWithWarmUpLR`: linear
warm-up over int(total_steps x warmup_ratio) steps, then half a cosine down to `lr_end`.
Only the parameters passed in get optimizer state, so frozen parameters cost no memory.

The optimizer's own step counter (`global_step`, the number of updates applied) is the lr
schedule's position: the update number k (0-based) uses lr(k). It is part of the optimizer
state that checkpoints save.
"""
from __future__ import annotations

from eve_ms.training.config import LRScheduleConfig, OptimizerConfig
from eve_ms.training.mindformers_env import import_mindformers


def build_lr_schedule(config: LRScheduleConfig, total_steps: int):
    """The MindFormers schedule named by `config.type`, spanning `total_steps` updates."""
    import_mindformers()
    from mindformers.core.lr import build_lr

    if total_steps < 1:
        raise ValueError(f"the lr schedule needs at least one step, got total_steps={total_steps}")
    section = {
        "type": config.type,
        "learning_rate": config.learning_rate,
        "warmup_ratio": config.warmup_ratio,
        "warmup_lr_init": config.warmup_lr_init,
        "lr_end": config.lr_end,
        "total_steps": int(total_steps),
    }
    return build_lr(section)


def build_optimizer(params, config: OptimizerConfig, learning_rate):
    """MindFormers AdamW over `params` (trainable parameters only) with the configured betas/eps/decay."""
    import_mindformers()
    from mindformers.core.optim import AdamW

    params = list(params)
    if not params:
        raise ValueError("no trainable parameters: the network has nothing for the optimizer to update")
    frozen = [p.name for p in params if not p.requires_grad]
    if frozen:
        raise ValueError(f"frozen parameters passed to the optimizer: {frozen[:5]}")
    return AdamW(
        params,
        learning_rate=learning_rate,
        betas=tuple(float(b) for b in config.betas),
        eps=float(config.eps),
        weight_decay=float(config.weight_decay),
    )


def optimizer_state(optimizer, model_params) -> dict:
    """The optimizer's own parameters (moments, step counter) by name, without the model's."""
    model_ids = {id(p) for p in model_params}
    state = {}
    for name, param in optimizer.parameters_and_names():
        if id(param) in model_ids:
            continue
        state[param.name or name] = param
    return state


def lr_at(schedule, step: int) -> float:
    """The learning rate the schedule gives update number `step` (0-based)."""
    import mindspore as ms

    return float(schedule(ms.Tensor(step, ms.int32)).asnumpy())
