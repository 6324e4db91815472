"""The training loop for any network that returns its loss pieces: data parallel, accumulation, clipping, checkpoints.

Network contract: `network(*[batch[k] for k in task.input_keys])` returns
`(loss_sum, num_targets, aux_loss, routing_stats)`:
- loss_sum: float32 scalar, the SUM of the per-token loss over the micro-batch's target tokens;
- num_targets: scalar, how many target tokens that sum covers;
- aux_loss: float32 scalar, already weighted (alpha x balance loss), 0 when there is none;
- routing_stats: float32 vector, shape [0] if none: one value per EVF layer (token success rate,
  averaged over micro-batches), or anything `TrainTask.stats_record` turns into record entries
  from its sum over micro-batches and ranks (Eve's routing counts, `eve_network.routing_record`).

One optimizer step minimises

    sum over ranks and micro-batches of loss_sum / N  +  mean over ranks and micro-batches of aux_loss

where N is the number of target tokens in the whole global batch (micro batch x gradient
accumulation x data-parallel size). N is known before the forward passes: every rank counts
its micro-batches with `task.count_targets(batch)` (numpy) and the counts are all-reduced, so
each micro-batch's backward pass is weighted by 1/N directly and the summed gradients are the
global batch's gradients whatever the split over ranks and micro-batches. The network's own
count is checked against it, so a wrong `count_targets` is an error, not a silent re-weighting.

Per step: forward/backward of each micro-batch, adding into float32 gradient buffers (one
compiled graph); all-reduce of the buffers and their global norm (a second graph); a NaN/inf
loss is an error naming the step; non-finite gradients are an error too, except with float16
and dynamic loss scaling, where the step is skipped and the scale lowered; clipping to
`max_grad_norm`; the AdamW update (a third graph, see `optim`). Rank 0 writes the JSONL log,
checkpoints every N steps (keeping K) and, at the end, the weights and plots.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np

from eve_ms.config import IGNORE_INDEX
from eve_ms.ops.seeded_dropout import set_random_key
from eve_ms.errors import EveError
from eve_ms.training import checkpoint as ckpt
from eve_ms.training.config import TrainConfig
from eve_ms.training.distributed import DistInfo, all_reduce_sum
from eve_ms.training.metrics import MetricsLog, ProgressBar, TensorBoardLog
from eve_ms.training.optim import build_lr_schedule, build_optimizer, lr_at, optimizer_state

class TrainingError(EveError, RuntimeError):
    """Training cannot go on: bad task set-up, an inconsistent batch, or a broken step."""


class NonFiniteError(TrainingError):
    """A NaN/inf loss or gradient; `step` is the 1-based optimizer step it happened in."""

    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


class BatchLoader(Protocol):
    """What the trainer needs from a data loader (one per rank, already sharded).

    Iterating yields this rank's micro-batches (dict of numpy arrays, fixed shapes per
    bucket) for the rest of the current epoch; iterating again starts the next epoch.
    `len()` is the number of micro-batches per epoch on this rank (equal on all ranks).
    `state_dict()` is a JSON-serialisable position reflecting exactly the batches handed
    out so far; it must not depend on the rank (rank 0 saves it for all), and
    `load_state_dict(state)` makes the next iteration continue from there. For global
    batches to be the same under any data-parallel size, micro-batch m of rank r in a step
    should hold the step's samples [(m x world + r) x b, (m x world + r + 1) x b) of one
    seeded global order.
    """

    def __iter__(self): ...

    def __len__(self) -> int: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def shifted_label_count(batch: dict, key: str = "labels") -> int:
    """Target tokens of a causal-LM batch: labels after the first position that are not IGNORE_INDEX."""
    labels = np.asarray(batch[key])
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


@dataclass
class TrainTask:
    """What a task builder (`task: module:function` in the yaml) returns for the trainer.

    The builder is called as `build(config: TrainConfig, dist: DistInfo) -> TrainTask`; it
    builds the network with the right parameters frozen (requires_grad=False) and loaded
    (`config.load_checkpoint`), and this rank's loader shard.
    """

    network: Any  # mindspore.nn.Cell, see the module docstring for its outputs
    loader: BatchLoader
    input_keys: Sequence[str]  # batch keys, in the order of network.construct's arguments
    count_targets: Callable[[dict], int] = shifted_label_count
    # Tokens a micro-batch feeds the network, for tokens/s; default: the size of input_ids.
    count_tokens: Optional[Callable[[dict], int]] = None
    stat_names: Sequence[str] = ()  # names of the routing_stats entries (EVF layers)
    # routing_stats summed over micro-batches and ranks -> entries of the step record; None: the
    # entries are per-layer rates, averaged into record["token_success_rate"] by stat_names
    stats_record: Optional[Callable[[Any], dict]] = None
    eval_cells: Sequence[str] = ()  # sub-cells kept in eval mode while training (frozen BatchNorm)
    # the decoder layers, first to last, that `recompute_config.recompute` recomputes (the first N of them)
    layer_cells: Sequence[str] = ()
    # hook(trainer, step) after a step's gradients are all-reduced, before the update
    hooks: Sequence[Callable] = ()
    # finish(trainer) on every rank after the final weights are written (e.g. the files that make
    # the output folder a model directory); write only where `trainer.dist.is_main`
    finish: Optional[Callable] = None
    metadata: dict = field(default_factory=dict)  # extra str -> str metadata for saved files


# --------------------------------------------------------------------------- graphs


def _cells():
    """The three step graphs (defined lazily: MindSpore is imported only when training)."""
    import mindspore as ms
    from mindspore import nn, ops

    class MicroStep(nn.Cell):
        """Forward + backward of one micro-batch, gradients added into the float32 buffers.

        One forward pass: its outputs are both what is reported and what is differentiated
        (value_and_grad with aux outputs), so dropout and routing noise see a single draw.
        """

        def __init__(self, network, weights, accum):
            super().__init__(auto_prefix=False)
            self.network = network
            self.weights = weights
            self.accum = accum
            self.value_and_grad = ms.value_and_grad(self.objective, None, weights, has_aux=True)

        def objective(self, *inputs):
            """(loss_sum / N_global + aux weight x aux) x loss scale, with the pieces as aux outputs."""
            data = inputs[:-3]
            inv_n, aux_w, scale = inputs[-3], inputs[-2], inputs[-1]
            loss_sum, num_targets, aux_loss, stats = self.network(*data)
            weighted = loss_sum * ops.cast(inv_n * scale, loss_sum.dtype) + aux_loss * ops.cast(
                aux_w * scale, aux_loss.dtype
            )
            return weighted, loss_sum, num_targets, aux_loss, stats

        def construct(self, *inputs):
            (_, loss_sum, num_targets, aux_loss, stats), grads = self.value_and_grad(*inputs)
            for buffer, grad in zip(self.accum, grads):
                ops.assign_add(buffer, ops.cast(grad, ms.float32))
            return loss_sum, num_targets, aux_loss, stats

    class ReduceGrads(nn.Cell):
        """All-reduce (sum) the buffers across ranks; global norm of the unscaled gradients."""

        def __init__(self, accum, distributed):
            super().__init__(auto_prefix=False)
            self.accum = accum
            self.distributed = distributed
            self.all_reduce = ops.AllReduce()

        def construct(self, inv_scale):
            total = ops.zeros((), ms.float32)
            for buffer in self.accum:
                value = buffer
                if self.distributed:
                    value = self.all_reduce(buffer)
                    ops.assign(buffer, value)
                # row sums first: MindSpore's CPU ReduceSum over a whole tensor runs on one thread (3x slower)
                rows = value.reshape(value.shape[0] if value.ndim > 1 else 1, -1)
                total = total + ops.square(rows).sum(-1).sum()
            return ops.sqrt(total) * inv_scale

    class ApplyUpdate(nn.Cell):
        """Scale the buffers (unscale x clip), one optimizer update, clear the buffers; returns the lr used."""

        def __init__(self, optimizer, accum):
            super().__init__(auto_prefix=False)
            self.optimizer = optimizer
            self.accum = accum

        def construct(self, factor):
            lr = self.optimizer.get_lr()
            grads = ()
            for buffer in self.accum:
                grads = grads + (buffer * factor,)
            self.optimizer(grads)
            for buffer in self.accum:
                ops.assign(buffer, ops.zeros_like(buffer))
            return lr

    return MicroStep, ReduceGrads, ApplyUpdate


# --------------------------------------------------------------------------- trainer


class _LossScale:
    """Loss scaling of float16 training: MindSpore's DynamicLossScaler, or a fixed scale."""

    def __init__(self, config, enabled: bool):
        self.dynamic = enabled and config.type == "DynamicLossScaleUpdateCell"
        self.scaler = None
        self.fixed = float(config.loss_scale_value) if enabled else 1.0
        if self.dynamic:
            import mindspore as ms

            self.scaler = ms.amp.DynamicLossScaler(
                scale_value=float(config.loss_scale_value),
                scale_factor=int(config.scale_factor),
                scale_window=int(config.scale_window),
            )

    @property
    def value(self) -> float:
        return float(self.scaler.scale_value.asnumpy()) if self.dynamic else self.fixed

    def adjust(self, finite: bool) -> None:
        if self.dynamic:
            import mindspore as ms

            self.scaler.adjust(ms.Tensor(finite))

    def state(self) -> dict:
        if not self.dynamic:
            return {"value": self.fixed}
        return {"value": self.value, "counter": int(self.scaler.counter.asnumpy())}

    def load(self, state: dict) -> None:
        if self.dynamic:
            import mindspore as ms

            self.scaler.scale_value.set_data(ms.Tensor(float(state["value"]), ms.float32))
            self.scaler.counter.set_data(ms.Tensor(int(state.get("counter", 0)), ms.int32))


class Trainer:
    """Trains `task.network` on `task.loader` as `config` says; see the module docstring."""

    def __init__(self, config: TrainConfig, task: TrainTask, dist: DistInfo = DistInfo(), log: Callable = print):
        import mindspore as ms
        from mindspore import Parameter, ParameterTuple, ops

        self.config = config
        self.task = task
        self.dist = dist
        self.log = log if dist.is_main else (lambda *a, **k: None)
        self.network = task.network
        self.accum_steps = config.grad_accum
        dp = config.parallel_config.data_parallel
        if dp is not None and dp != dist.world_size:
            raise TrainingError(
                f"parallel_config.data_parallel is {dp} but the job has {dist.world_size} worker(s) "
                f"(msrun --worker_num); set it to {dist.world_size} or null"
            )
        self.global_batch = config.global_batch_size(dist.world_size)

        micro_batches = len(task.loader)
        if dist.world_size > 1 and all_reduce_sum([micro_batches], dist)[0] != micro_batches * dist.world_size:
            raise TrainingError(
                f"rank {dist.rank}'s loader has {micro_batches} micro-batches per epoch but other ranks' differ; "
                "every rank must take the same number of steps"
            )
        self.steps_per_epoch = micro_batches // self.accum_steps
        if self.steps_per_epoch < 1:
            raise TrainingError(
                f"the loader has {micro_batches} micro-batch(es) per epoch on this rank, fewer than "
                f"gradient_accumulation_steps={self.accum_steps}: not one optimizer step per epoch"
            )
        lr_cfg = config.lr_schedule
        epochs = config.runner_config.epochs
        self.total_steps = lr_cfg.total_steps if lr_cfg.total_steps > 0 else epochs * self.steps_per_epoch
        stop = config.runner_config.stop_step
        self.last_step = min(self.total_steps, stop) if stop > 0 else self.total_steps

        self.params = [p for p in self.network.get_parameters() if p.requires_grad]
        if not self.params:
            raise TrainingError("the network has no trainable parameter (every requires_grad is False)")
        self.recomputed = self._apply_recompute(config.recompute_config)
        self._set_optimizer_parallel(config.parallel.enable_parallel_optimizer)
        # which device trains in which dtype is checked when the yaml loads (WrapperConfig.check_device)
        self.compute_dtype = config.runner_wrapper.compute_dtype
        train_net = self.network
        if self.compute_dtype != "float32":
            dtype = ms.float16 if self.compute_dtype == "float16" else ms.bfloat16
            train_net = ms.amp.auto_mixed_precision(self.network, config.runner_wrapper.amp_level, dtype=dtype)
        self.loss_scale = _LossScale(config.runner_wrapper.scale_sense, enabled=self.compute_dtype == "float16")

        self.lr_schedule = build_lr_schedule(lr_cfg, self.total_steps)
        weights = ParameterTuple(self.params)
        self.optimizer = build_optimizer(weights, config.optimizer, self.lr_schedule)
        self.accum = ParameterTuple([
            Parameter(ops.zeros(p.shape, ms.float32), name=f"grad_accum.{p.name}", requires_grad=False)
            for p in self.params
        ])
        micro_cls, reduce_cls, apply_cls = _cells()
        self._micro = micro_cls(train_net, weights, self.accum)
        self._reduce = reduce_cls(self.accum, dist.world_size > 1)
        self._apply = apply_cls(self.optimizer, self.accum)

        self.step = 0  # optimizer steps done (global batches consumed)
        out = config.output_dir
        self.checkpoints = ckpt.CheckpointManager(
            os.path.join(out, "checkpoints"), config.checkpoint.keep_checkpoint_max, log=self.log
        )
        self.metrics = MetricsLog(os.path.join(out, "train_log.jsonl"), enabled=dist.is_main)
        self.weights_path = os.path.join(out, "model.safetensors")
        self._iterator = None

    # ----------------------------------------------------------------- set-up helpers

    def _apply_recompute(self, recompute) -> list:
        """MindSpore recompute (`Cell.recompute()`) on the first N of `task.layer_cells`; returns their paths.

        A recomputed layer keeps only its input and output from forward to backward and runs its forward
        again in the backward pass: less activation memory, about one more forward of those layers.
        `use_reentrant=False` (PyNative only; graph mode ignores it): the reentrant form re-differentiates the
        layer's forward and fails on the EVF layer's custom allocation kernel ("Custom's bprop not defined")."""
        from eve_ms.training.lora import sub_cell

        cells = list(self.task.layer_cells)
        count = recompute.layers(len(cells))
        if recompute.recompute is not False and recompute.recompute != 0 and not cells:
            raise TrainingError("recompute_config.recompute is set but the task names no decoder layers "
                                "(TrainTask.layer_cells)")
        for path in cells[:count]:
            sub_cell(self.network, path).recompute(use_reentrant=False)
        return cells[:count]

    def _set_optimizer_parallel(self, enabled: bool) -> None:
        """MindSpore's optimizer parallel in data_parallel mode (set before the optimizer is built).

        The optimizer (nn.AdamWeightDecay) then updates this rank's share of the weights and broadcasts them;
        TrainConfig.validate refuses it off Ascend, where MindSpore raises."""
        if not enabled or self.dist.world_size == 1:
            return
        import mindspore as ms

        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, enable_parallel_optimizer=True,
                                     device_num=self.dist.world_size)

    def _next_micro_batch(self) -> dict:
        if self._iterator is None:
            self._iterator = iter(self.task.loader)
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.task.loader)  # next epoch
            try:
                return next(self._iterator)
            except StopIteration:
                raise TrainingError("the data loader yielded no batch for a new epoch") from None

    def _count_tokens(self, batch: dict, targets: int) -> int:
        if self.task.count_tokens is not None:
            return int(self.task.count_tokens(batch))
        if "input_ids" in batch:
            return int(np.asarray(batch["input_ids"]).size)
        return targets

    # ----------------------------------------------------------------- one step

    def train_step(self, batches: Sequence[dict]) -> dict:
        """One optimizer step on this rank's micro-batches of the next global batch; returns its record."""
        import mindspore as ms

        step = self.step + 1
        started = time.perf_counter()
        counts = [int(self.task.count_targets(b)) for b in batches]
        tokens = sum(self._count_tokens(b, c) for b, c in zip(batches, counts))
        num_global = float(all_reduce_sum([sum(counts)], self.dist)[0])
        if num_global <= 0:
            raise TrainingError(f"step {step}: the global batch has no target tokens (every label is ignored)")
        inv_n = ms.Tensor(1.0 / num_global, ms.float32)
        aux_w = ms.Tensor(1.0 / (self.accum_steps * self.dist.world_size), ms.float32)
        scale_value = self.loss_scale.value
        scale = ms.Tensor(scale_value, ms.float32)

        loss_sum = aux_sum = 0.0
        stats_sum = None
        for index, (batch, count) in enumerate(zip(batches, counts)):
            inputs = [self._to_tensor(batch, key, step) for key in self.task.input_keys]
            # random ops draw from (seed, step, global micro-batch index) alone: runs repeat and resume exactly
            set_random_key(self.config.seed, step, index * self.dist.world_size + self.dist.rank)
            out_loss, out_n, out_aux, out_stats = self._micro(*inputs, inv_n, aux_w, scale)
            micro_loss = float(out_loss.asnumpy())
            if not math.isfinite(micro_loss):
                raise NonFiniteError(
                    step, f"non-finite loss {micro_loss} at step {step} (micro-batch {index} on rank {self.dist.rank})"
                )
            if abs(float(out_n.asnumpy()) - count) > 0.5:
                raise TrainingError(
                    f"step {step}, micro-batch {index}: the network counted {float(out_n.asnumpy()):.0f} target "
                    f"tokens but task.count_targets gave {count}; the loss normalisation would be wrong"
                )
            loss_sum += micro_loss
            aux_sum += float(out_aux.asnumpy())
            stats = np.asarray(out_stats.asnumpy(), np.float64).reshape(-1)
            stats_sum = stats if stats_sum is None else stats_sum + stats

        local = np.concatenate([[loss_sum, aux_sum, tokens], stats_sum])
        total = all_reduce_sum(local, self.dist).astype(np.float64)
        shares = self.accum_steps * self.dist.world_size
        loss, aux_loss = total[0] / num_global, total[1] / shares
        if not (math.isfinite(loss) and math.isfinite(aux_loss)):
            raise NonFiniteError(step, f"non-finite loss at step {step}: loss {loss}, aux loss {aux_loss}")

        grad_norm = float(self._reduce(ms.Tensor(1.0 / scale_value, ms.float32)).asnumpy())
        for hook in self.task.hooks:
            hook(self, step)
        skipped = False
        if math.isfinite(grad_norm):
            clip = 1.0
            max_norm = self.config.runner_wrapper.max_grad_norm
            if self.config.runner_wrapper.use_clip_grad:
                clip = min(1.0, max_norm / (grad_norm + 1e-6))
            lr = float(self._apply(ms.Tensor(clip / scale_value, ms.float32)).asnumpy())
            self.loss_scale.adjust(True)
        elif self.loss_scale.dynamic:
            skipped = True
            lr = lr_at(self.lr_schedule, int(self.optimizer.global_step.asnumpy().reshape(-1)[0]))
            self._zero_grads()
            self.loss_scale.adjust(False)
            self.log(f"step {step}: float16 gradient overflow at loss scale {scale_value:g}; step skipped")
        else:
            raise NonFiniteError(step, f"non-finite gradient norm {grad_norm} at step {step} (loss {loss:.6g})")

        elapsed = time.perf_counter() - started
        record = {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "loss": loss,
            "aux_loss": aux_loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": total[2] / elapsed if elapsed > 0 else 0.0,
            "tokens": int(total[2]),
            "target_tokens": int(num_global),
            "step_time_s": elapsed,
            "skipped": skipped,
            "loss_scale": scale_value,
        }
        if len(total) > 3 and self.task.stats_record is not None:
            record.update(self.task.stats_record(total[3:]))
        elif len(total) > 3:
            names = list(self.task.stat_names) or [str(i) for i in range(len(total) - 3)]
            if len(names) != len(total) - 3:
                raise TrainingError(f"task.stat_names has {len(names)} names for {len(total) - 3} routing stats")
            record["token_success_rate"] = {n: float(v) / shares for n, v in zip(names, total[3:])}
        self.step = step
        return record

    def _to_tensor(self, batch: dict, key: str, step: int):
        import mindspore as ms

        if key not in batch:
            raise TrainingError(f"step {step}: the batch has no {key!r} (it has {sorted(batch)})")
        return ms.Tensor(np.asarray(batch[key]))

    def _zero_grads(self) -> None:
        from mindspore import ops

        for buffer in self.accum:
            buffer.set_data(ops.zeros(buffer.shape, buffer.dtype))

    def gradients(self) -> dict:
        """The current step's summed (all-reduced after the reduce graph) gradients, unscaled, by parameter name."""
        scale = self.loss_scale.value
        return {p.name: b.asnumpy() / scale for p, b in zip(self.params, self.accum)}

    # ----------------------------------------------------------------- checkpoints

    def state_tensors(self) -> dict:
        tensors = {ckpt.MODEL_PREFIX + p.name: ckpt.param_to_numpy(p) for p in self.params}
        for name, param in optimizer_state(self.optimizer, self.params).items():
            tensors[ckpt.OPTIMIZER_PREFIX + name] = ckpt.param_to_numpy(param)
        return tensors

    def save_checkpoint(self) -> Optional[str]:
        """Rank 0 writes the training state of the current step; other ranks do nothing."""
        if not self.dist.is_main:
            return None
        metadata = {
            "data_state": json.dumps(self.task.loader.state_dict()),
            "loss_scale": json.dumps(self.loss_scale.state()),
            "rng": json.dumps(_rng_state()),
            "config_yaml": self.config.yaml_text,
            "world_size": str(self.dist.world_size),
            "global_batch": str(self.global_batch),
            "total_steps": str(self.total_steps),
            "lr_step": str(int(self.optimizer.global_step.asnumpy().reshape(-1)[0])),
            **{str(k): str(v) for k, v in self.task.metadata.items()},
        }
        return self.checkpoints.save(self.step, self.state_tensors(), metadata)

    def resume(self, start_if_none: bool = False) -> bool:
        """Continue from the newest intact checkpoint in the output folder.

        With none usable, a CheckpointError lists what was found and why each was rejected; with
        `start_if_none` (`--resume-or-start`) the run starts at step 0 instead and False is returned.
        """
        state = self.checkpoints.newest_valid()
        if state is None:
            if not start_if_none:
                raise self.checkpoints.no_usable_checkpoint()
            self.log(f"no usable checkpoint to resume from in {self.checkpoints.directory}; starting at step 0")
            return False
        if int(state.metadata.get("global_batch", self.global_batch)) != self.global_batch:
            raise TrainingError(
                f"{state.path} was trained with global batch {state.metadata['global_batch']}, "
                f"this run has {self.global_batch}: resuming would change the data order"
            )
        model = state.section(ckpt.MODEL_PREFIX)
        params = {p.name: p for p in self.params}
        extra = sorted(set(model) - set(params))
        if extra:
            raise TrainingError(f"{state.path} trains parameters this network freezes or lacks: {extra[:8]}")
        ckpt.assign_tensors(params, model, state.path, strict=True)
        optim = optimizer_state(self.optimizer, self.params)
        ckpt.assign_tensors(optim, state.section(ckpt.OPTIMIZER_PREFIX), state.path, strict=True)
        self.loss_scale.load(state.json("loss_scale", {}))
        self.task.loader.load_state_dict(state.json("data_state", {}))
        _set_rng_state(state.json("rng", {}))
        self._iterator = None
        self.step = state.step
        self.metrics.truncate_after(self.step)
        self.log(f"resumed from {state.path} (step {self.step} of {self.total_steps})")
        return True

    def save_weights(self, path: Optional[str] = None) -> Optional[str]:
        """Rank 0 writes every parameter of the network (the next stage's `load_checkpoint`)."""
        if not self.dist.is_main:
            return None
        path = path or self.weights_path
        meta = {"step": str(self.step), "stage": str(self.config.stage), "config_yaml": self.config.yaml_text}
        meta.update({str(k): str(v) for k, v in self.task.metadata.items()})
        ckpt.save_weights(self.network, path, meta)
        return path

    def _log_data_reports(self, finish: str | None = None) -> None:
        """Write the loader's data reports (end of an epoch; with `finish`, the run's unfinished epoch) to the log."""
        loader = self.task.loader
        take = getattr(loader, "finish_report", None) if finish else getattr(loader, "take_reports", None)
        if take is None:
            return
        for report in take(finish) if finish else take():
            self.metrics.write({"step": self.step, **report})

    # ----------------------------------------------------------------- the loop

    def fit(self, resume: bool = False, start_if_none: bool = False) -> list[dict]:
        """Train to the last step, checkpointing on the way; returns this process's step records.

        `resume`: continue from the newest usable checkpoint (an error if there is none, unless `start_if_none`).
        """
        if resume:
            self.resume(start_if_none)
        elif self.checkpoints.checkpoints():
            self.log(
                f"warning: {self.checkpoints.directory} holds checkpoints of an earlier run; this run starts at "
                "step 0 and replaces them (use --resume to continue that run instead)"
            )
        self.network.set_train(True)
        for path in self.task.eval_cells:
            from eve_ms.training.lora import sub_cell

            sub_cell(self.network, path).set_train(False)
        if self.step == 0:
            self.metrics.truncate_after(0)
        self.log(
            f"training {self.last_step - self.step} step(s) from step {self.step}: global batch {self.global_batch} = "
            f"{self.config.micro_batch_size} x {self.accum_steps} accumulation x {self.dist.world_size} rank(s), "
            f"{sum(int(np.prod(p.shape)) for p in self.params)} trainable parameters"
        )
        bar = ProgressBar(self.last_step, self.step, enabled=self.dist.is_main and self.config.logging.progress_bar)
        board = TensorBoardLog(self.config.output_dir, enabled=self.dist.is_main and self.config.logging.tensorboard,
                               purge_step=self.step + 1)
        records = []
        save_every = self.config.checkpoint.save_checkpoint_steps
        health = HealthMonitor(self.config.health, self.log)
        ended = "error"
        try:
            while self.step < self.last_step:
                batches = [self._next_micro_batch() for _ in range(self.accum_steps)]
                record = self.train_step(batches)
                records.append(record)
                self.metrics.write(record)
                board.write(record)
                bar.update(record)
                self._log_data_reports()
                if self.step % save_every == 0 or self.step == self.last_step:
                    self.save_checkpoint()
                event = health.check(record)
                if event is not None:
                    self.metrics.write(event)
                    if event["stop"]:
                        raise TrainingError(event["message"] + "; stopped (health.stop_on_stall is true)")
            ended = "stop step" if self.last_step < self.total_steps else "run ended"
        except KeyboardInterrupt:
            ended = "interrupted"
            raise
        finally:
            bar.close()
            board.close()
            try:
                self._log_data_reports(finish=ended)
            except Exception:  # noqa: BLE001 - never hide the error that ended the run
                if ended != "error":
                    raise
        self.save_weights()
        if self.task.finish is not None:
            self.task.finish(self)
        return records


class HealthMonitor:
    """Training health: the loss constant and the gradient norm exactly 0 for `stall_steps` steps in a row.

    That is a run that no longer learns (e.g. a learning rate so large that the first updates
    saturated every activation); it is reported once per stall, as a warning line and a
    `training_health` log event, and with `stop_on_stall` it ends the run.
    """

    def __init__(self, config, log=print):
        self.config, self.log = config, log
        self.streak, self.loss, self.warned = 0, None, False

    def check(self, record: dict) -> Optional[dict]:
        """The event to log after this step's record, or None."""
        if self.config.stall_steps <= 0:
            return None
        loss, norm = record["loss"], record["grad_norm"]
        if norm == 0.0 and self.loss is not None and abs(loss - self.loss) <= 1e-6 * max(1.0, abs(loss)):
            self.streak += 1
        elif norm == 0.0:
            self.streak, self.loss = 1, loss
        else:
            self.streak, self.loss, self.warned = 0, None, False
        if self.streak < self.config.stall_steps or self.warned:
            return None
        self.warned = True
        first = record["step"] - self.streak + 1
        message = (f"training health: the loss has stayed at {loss:.6g} with a gradient norm of exactly 0 for "
                   f"{self.streak} steps (steps {first}..{record['step']}): the model is not learning; check "
                   f"lr_schedule.learning_rate (now {record['lr']:.3g}) and the data's labels")
        self.log(f"warning: {message}")
        return {"event": "training_health", "step": record["step"], "stalled_steps": self.streak,
                "loss": loss, "message": message, "stop": bool(self.config.stop_on_stall)}


def _rng_state() -> dict:
    """numpy's, Python's and MindSpore's global generator states (for random draws a task makes itself;
    the trainer's own random ops are keyed per micro-batch, see `set_random_key`)."""
    import mindspore as ms

    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "mindspore": ms.get_rng_state().asnumpy().tolist(),
    }


def _set_rng_state(state: dict) -> None:
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "mindspore" in state:
        import mindspore as ms

        ms.set_rng_state(ms.Tensor(np.asarray(state["mindspore"], np.uint8)))
