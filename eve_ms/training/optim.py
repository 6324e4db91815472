"""Optimizer and learning-rate schedule.

AdamW is PyTorch's AdamW (bias-corrected moments, decoupled weight decay) in one of two forms,
both with the same state (`adam_m.*`, `adam_v.*`, `global_step`), so checkpoints move between them:
- `fused: true` (default): `FusedAdamW`, MindSpore's fused `AdamWeightDecay` kernel, one kernel per
  tensor. MindFormers' AdamW is a chain of about ten element-wise ops per tensor, each a pass over
  memory; on CPU that chain was 4x the fused kernel's time and 15 % of a stage-3 step.
- `fused: false`: `mindformers.core.optim.AdamW`.
The schedule is built by MindFormers' registry from the `lr_schedule` section, e.g.
`CosineWithWarmUpLR`: linear warm-up over int(total_steps x warmup_ratio) steps, then half a cosine
down to `lr_end`. Only the parameters passed in get optimizer state, so frozen parameters cost no memory.

The optimizer's own step counter (`global_step`, the number of updates applied) is the lr
schedule's position: the update number k (0-based) uses lr(k). It is part of the optimizer
state that checkpoints save.
"""
from __future__ import annotations

from eve_ms.training.config import LRScheduleConfig, OptimizerConfig
from eve_ms.mindformers_env import import_mindformers


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


def fused_adamw_class():
    """`FusedAdamW` (defined lazily: MindSpore is imported only when training)."""
    import mindspore as ms
    from mindspore import nn, ops

    class FusedAdamW(nn.Optimizer):
        """torch.optim.AdamW's update through MindSpore's fused `AdamWeightDecay` kernel.

        The kernel computes m, v and w -= lr' (m / (sqrt(v) + eps') + decay' w) without bias
        correction. With c1 = 1 - beta1^t and c2 = 1 - beta2^t at update t (1-based),
            lr' = lr sqrt(c2) / c1,   eps' = eps sqrt(c2),   decay' = decay c1 / sqrt(c2)
        make that lr (m/c1 / (sqrt(v/c2) + eps) + decay w): AdamW's step, decay on the old weights.

        MindSpore's optimizer parallel (data_parallel mode, `parallel.enable_parallel_optimizer`) works as in
        nn.AdamWeightDecay: `optim_filter` marks this rank's share of the weights, only those are updated, and
        `broadcast_params` sends each share from its owner to every rank. Without it the filter is all True.
        """

        _support_parallel_optimizer = True

        def __init__(self, params, learning_rate, betas, eps, weight_decay):
            super().__init__(learning_rate, params)  # the decay is ours (folded above), not the base class's
            self.beta1 = ms.Tensor(float(betas[0]), ms.float32)
            self.beta2 = ms.Tensor(float(betas[1]), ms.float32)
            self.eps = ms.Tensor(float(eps), ms.float32)
            self.decay = ms.Tensor(float(weight_decay), ms.float32)
            self.moments1 = self._parameters.clone(prefix="adam_m", init="zeros")
            self.moments2 = self._parameters.clone(prefix="adam_v", init="zeros")
            self.update = ops.AdamWeightDecay()

        def construct(self, gradients):
            lr = self.get_lr()  # lr(k) for update k = global_step before the increment
            self.assignadd(self.global_step, self.global_step_increase_tensor)
            t = ops.cast(self.global_step, ms.float32).reshape(())
            c1 = 1.0 - ops.pow(self.beta1, t)
            root_c2 = ops.sqrt(1.0 - ops.pow(self.beta2, t))
            step_lr = lr * root_c2 / c1
            eps = self.eps * root_c2
            decay = self.decay * c1 / root_c2
            done = True
            for param, m, v, grad, mine in zip(self._parameters, self.moments1, self.moments2, gradients,
                                               self.optim_filter):
                if mine:
                    out = self.update(param, m, v, step_lr, self.beta1, self.beta2, eps, decay, grad)
                    done = ops.depend(done, out)
            if self.use_parallel:
                self.broadcast_params(done)
            return done

    return FusedAdamW


def build_optimizer(params, config: OptimizerConfig, learning_rate):
    """AdamW over `params` (trainable parameters only) with the configured betas/eps/decay (see the module doc)."""
    params = list(params)
    if not params:
        raise ValueError("no trainable parameters: the network has nothing for the optimizer to update")
    frozen = [p.name for p in params if not p.requires_grad]
    if frozen:
        raise ValueError(f"frozen parameters passed to the optimizer: {frozen[:5]}")
    if config.fused:
        return fused_adamw_class()(params, learning_rate, config.betas, config.eps, config.weight_decay)
    import_mindformers()
    from mindformers.core.optim import AdamW

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
