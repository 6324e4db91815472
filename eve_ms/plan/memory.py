"""Peak memory of one device in a training step, by part (bytes), as the eve-ms trainer allocates it.

- frozen weights: float32 storage (the trainer keeps parameters in float32; amp O2 casts them per use),
  plus, under float16/bfloat16, the compute-dtype copies of the weights whose input gradient the
  backward pass needs (kept from forward to backward);
- trainable weights: float32;
- gradients: the trainer's float32 accumulation buffers plus the float32 gradients the backward graph
  returns before they are added in (eve_ms.training.trainer.MicroStep);
- optimizer state: AdamW's two float32 moments per trainable weight. MindSpore's optimizer parallel in
  data_parallel mode (parallel.enable_parallel_optimizer) splits the update, not the state: every rank
  allocates both moments of every parameter (nn.AdamWeightDecay clones all parameters, rank r updates
  only its share and broadcasts it), so the state is not divided;
- activations: what the backward reads, per decoder layer (with recompute: the layer's input only),
  plus the adapter and lm_head inputs;
- EVF expert buffers: the tokens gathered into the two experts' [capacity, H] buffers and the rows
  scattered back, while an EVF layer runs (working memory, not saved);
- logits: [tokens, vocab] logits, their float32 log-softmax and its gradient;
- working: the largest temporaries of one block (attention scores, the rebuilt layer under recompute);
- framework reserve: the device's memory a process cannot allocate (devices.yaml); the bench measures
  this machine's own (a fresh process's CPU pool after its first op: 35 MiB with MindFormers imported).

The model is of a device whose allocator frees a tensor after its last use, which MindSpore's does:
on CPU its memory pool holds at a step's peak what the parts above predict (`tools/bench.py --suite
plan`, which reads the pool's resident pages; `tools/benchmarks/pool_reuse.py` shows the reuse on its
own). The parts are summed, an upper bound: the compiled small step peaks where the loss's backward
starts, before the backward's float32 gradients exist (its graph's liveness, from MindSpore's IR dump).
What a CPU process holds besides (interpreter and libraries, compiled graphs, the CPU kernels' host
buffers outside the pool) is not a device's memory and is not planned.
"""
from __future__ import annotations

from eve_ms.plan.inventory import llm_denses, param_counts
from eve_ms.plan.stage import StageSpec
from eve_ms.plan.step import StepModel, _in_attention

F32 = 4


def trainable_params(spec: StageSpec) -> int:
    """Weights the stage's optimizer updates (LoRA factors included)."""
    model = spec.model
    count = 0
    for dense in llm_denses(model):
        if spec.dense_trains(dense):
            count += dense.params
        if spec.lora_applies(dense):
            count += spec.lora_rank * (dense.fan_in + dense.fan_out)
    if spec.adapter_trains:
        count += param_counts(model)["adapter"]
    if spec.llm_norms_and_embeddings_train:
        llm = model.llm
        count += llm.vocab_size * llm.hidden_size + llm.hidden_size * (2 * llm.num_layers + 1)
    return count


def _block_of(dense) -> str:
    return "attention" if _in_attention(dense) else "ffn"


def memory_parts(spec: StageSpec, step: StepModel | None = None, reserve_bytes: float = 0.0) -> dict:
    """Bytes per part (see the module docstring) for one device; `total` is their sum."""
    step = step or StepModel(spec)
    model, e = spec.model, spec.bytes_per_element
    total_params = param_counts(model)["total"]
    train = trainable_params(spec)
    lora = sum(spec.lora_rank * (d.fan_in + d.fan_out) for d in llm_denses(model) if spec.lora_applies(d))
    frozen = total_params - (train - lora)
    casts = 0.0
    if e != F32:  # compute-dtype copies of the matrices the input-gradient products read
        running = {blk.name for blk in step.blocks if blk.backward_runs}
        casts = e * sum(d.params for d in llm_denses(model)
                        if d.part == "lm_head" or f"layer{d.layer}.{_block_of(d)}" in running)
    saved = step.saved_bytes()
    evf = 0.0
    if step.evf_layers:
        h = model.llm.hidden_size
        evf = (2 * step.capacity + 1) * h * e * 2 + step.tokens * h * e  # gathered in, expert out, combined
    parts = {
        "frozen_weights": frozen * F32 + casts,
        "trainable_weights": train * F32,
        "gradients": 2 * train * F32,
        "optimizer_state": 2 * train * F32,
        "activations": saved["decoder_layers"] + saved["adapter_and_head"],
        "evf_buffers": evf,
        "logits": step.logits_bytes,
        "working": step.working_bytes(),
        "framework_reserve": reserve_bytes,
    }
    parts["total"] = sum(parts.values())
    return parts
