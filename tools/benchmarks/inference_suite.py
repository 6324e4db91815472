"""Suite `inference`: language-only inference of the converted stage-3 model, KV-cache generation beside
Hugging Face transformers and beside its floor, and `eve-ms eval` questions per second.

The stage-3 model is `convert_dense_to_evf(dense)` switched to `language_only` (DESIGN: text-only
inputs run the language FFN alone, bit-identical to the dense model). Side by side in graph mode:
full-sequence forward tokens/s of both (target: within 2%).

Generation (greedy, static KV cache, `greedy_generate`: `Generator`'s loop, the one eve-ms chat, eval and
the server run): the dense LLM, its stage-3 conversion, the
same weights exported by `eve-ms convert to-hf-llm`'s code (`export_hf_llm`) and loaded by
transformers' `LlamaForCausalLM`, generating with `generate` (greedy, its KV cache), and the decode
floor: the decode step's matrix products alone (per layer q, k, v, o, the FFN's three, the attention
scores and weighted values over the cache's slots; the LM head) in one MindSpore graph, as the
`floor` suite does for training. Taking turns in every repeat. eve-ms's prefill and decode steps are
timed call by call; transformers' prefill is a `generate` of one token and its decode step is
(generate of N tokens - generate of 1) / (N - 1). Both generate the same tokens (checked).
Targets: decode tokens/s >= 0.5x transformers', decode step <= 2x its floor, prefill >= 0.5x.

`eve-ms eval`: the runner (`eval.runner.evaluate`, what the command calls) with the checkpoint's
predictor on a fixed GQA-format set of short questions, half with images, on the tiny Eve model
in the command's CPU defaults (graph mode, float32, length bucket 64) and in its former defaults
(PyNative, float16), at batch sizes 1 and 8: questions per second (a warm-up on an image question
and a text-only one, which compiles the graphs, is not timed), the speed-up, and whether the answers
agree.
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks.common import (PRESETS, Report, eve_config, fastest_torch, interleaved_times, median, paired_ratio,
                               torch_runners)
from benchmarks.floor_suite import Gemm

SIZES = {"default": {"preset": "small", "batch": 4, "length": 128, "prompt": 64, "new_tokens": 32, "repeats": 21,
                     "generate_repeats": 5, "eval_questions": 16, "eval_batches": (1, 8)},
         "quick": {"preset": "tiny", "batch": 2, "length": 32, "prompt": 16, "new_tokens": 8, "repeats": 3,
                   "generate_repeats": 2, "eval_questions": 4, "eval_batches": (2,)}}
EVAL_CORPUS = ["A chat between a curious user and an artificial intelligence assistant. USER: ASSISTANT:",
               "What is in the picture? A red apple on a wooden table next to a cup of tea.",
               "How many birds are there? There are three birds sitting on the fence. Yes. No.",
               "Is the cat on the sofa? The cat sleeps on the sofa near the window."]
EVAL_QUESTIONS = ["What is in the picture?", "How many birds are there?", "Is the cat on the sofa?",
                  "What colour is the apple?"]


def run(size: str, report: Report) -> None:
    import mindspore as ms

    from eve_ms.config import EVFConfig, LLMConfig
    from eve_ms.models.evf_convert import convert_dense_to_evf
    from eve_ms.models.llm import LLM

    spec = SIZES[size]
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    config = LLMConfig(**PRESETS[spec["preset"]]["llm"])
    dense = LLM(config)
    stage3 = convert_dense_to_evf(dense, EVFConfig(enabled=True))
    stage3.set_evf_mode("language_only")
    for model in (dense, stage3):
        model.set_train(False)
    rng = np.random.default_rng(0)
    ids = ms.Tensor(rng.integers(4, config.vocab_size, (spec["batch"], spec["length"])).astype(np.int32))
    same = np.array_equal(dense(ids).asnumpy().view(np.uint32), stage3(ids).asnumpy().view(np.uint32))

    def forward(model):
        return lambda: model(ids).asnumpy()

    times = interleaved_times({"dense": forward(dense), "stage3": forward(stage3)}, spec["repeats"], warmup=1)
    tokens = spec["batch"] * spec["length"]
    t = {name: median(v) for name, v in times.items()}
    note = f"{spec['preset']} LLM, batch {spec['batch']} x {spec['length']} tokens, graph mode"
    report.add("forward_tokens_per_s[dense]", tokens / t["dense"], "tok/s", note=note)
    report.add("forward_tokens_per_s[stage3,language_only]", tokens / t["stage3"], "tok/s", note=note)
    report.add("language_only_time_over_dense", paired_ratio(times["stage3"], times["dense"]), "x", "<= 1.02",
               note="logits bit-identical to the dense model" if same else "LOGITS DIFFER from the dense model")

    prompt = rng.integers(4, config.vocab_size, (spec["batch"], spec["prompt"])).astype(np.int32)
    mask = np.ones_like(prompt)
    _generation(spec, report, config, dense, stage3, prompt, mask)
    _eval_questions_per_second(spec, report)


def decode_products(config, batch: int, slots: int) -> list:
    """The matrix products of one decode step (one token per sample) over a cache of `slots` slots."""
    h, d, inner = config.hidden_size, config.dim_per_head, config.intermediate_size
    gemms = []
    for i in range(config.num_layers):
        for name, fan_out in (("q", config.num_heads * d), ("k", config.kv_heads * d), ("v", config.kv_heads * d)):
            gemms.append(Gemm(f"layer{i}.{name}", batch, h, fan_out, trans_b=True))
        gemms.append(Gemm(f"layer{i}.scores", 1, d, slots, trans_b=True, batch=batch * config.num_heads))
        gemms.append(Gemm(f"layer{i}.weighted values", 1, slots, d, batch=batch * config.num_heads))
        gemms.append(Gemm(f"layer{i}.o", batch, config.num_heads * d, h, trans_b=True))
        for name in ("gate", "up"):
            gemms.append(Gemm(f"layer{i}.{name}", batch, h, inner, trans_b=True))
        gemms.append(Gemm(f"layer{i}.down", batch, inner, h, trans_b=True))
    gemms.append(Gemm("lm_head", batch, h, config.vocab_size, trans_b=True))
    return gemms


def decode_floor_cell(gemms):
    """The products of one decode step in one graph-mode cell, as the step has them: every operand a
    Parameter of its own (as the step's weights; distinct ones, so the compiler merges nothing; no
    inputs to bind per call) and one small output, the first element of every product, so that what
    comes back to the host is 4 bytes a product (returning the products whole made reading them back
    cost as much as the step's own non-matrix work: a floor that loose measured the step at 0.95x it)."""
    import mindspore as ms
    from mindspore import nn, ops

    class DecodeFloor(nn.Cell):
        def __init__(self):
            super().__init__()
            operands = []
            self.prims = []
            for index, g in enumerate(gemms):
                self.prims.append((ops.BatchMatMul if g.batch else ops.MatMul)(transpose_a=g.trans_a,
                                                                              transpose_b=g.trans_b))
                for side, shape in (("a", g.a_shape()), ("b", g.b_shape())):
                    operands.append(ms.Parameter(ms.Tensor(np.full(shape, 0.01, np.float32)),
                                                 name=f"floor{index}_{side}", requires_grad=False))
            self.operands = ms.ParameterTuple(operands)

        def construct(self):
            firsts = ()
            for index, prim in enumerate(self.prims):
                out = prim(self.operands[2 * index], self.operands[2 * index + 1])
                firsts = firsts + (out.reshape(-1)[:1],)
            return ops.concat(firsts)

    return DecodeFloor()


def _hf_llama(llm, folder: str):
    """The LLM exported as `eve-ms convert to-hf-llm` writes it, loaded by transformers (float32, eval mode)."""
    from transformers import AutoModelForCausalLM

    from eve_ms.convert.eve_to_hf import export_hf_llm

    export_hf_llm(llm, folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()


def _generation(spec, report, config, dense, stage3, prompt, mask) -> None:
    import tempfile

    import torch

    from eve_ms.inference.generate import greedy_generate
    from eve_ms.models.llm import LLMDecodeStep

    batch, new = spec["batch"], spec["new_tokens"]
    slots = spec["prompt"] + new
    with tempfile.TemporaryDirectory() as folder:
        hf = _hf_llama(dense, folder)
    ids_t, mask_t = torch.as_tensor(prompt, dtype=torch.long), torch.as_tensor(mask)
    floor = decode_floor_cell(decode_products(config, batch, slots))

    eve_steps = {"dense": LLMDecodeStep(dense), "stage3": LLMDecodeStep(stage3)}
    generated, calls = {}, {name: [] for name in eve_steps}

    def eve_run(name):
        def run():
            timings = []
            generated[name] = greedy_generate(eve_steps[name], prompt, mask, new, timings=timings)
            calls[name].append(timings)
        return run

    def hf_generate(tokens):
        def run():
            with torch.no_grad():
                out = hf.generate(input_ids=ids_t, attention_mask=mask_t, max_new_tokens=tokens,
                                  min_new_tokens=tokens, do_sample=False, pad_token_id=0)
            generated[f"hf{tokens}"] = out[:, prompt.shape[1]:].numpy()
        return run

    def floor_run():
        floor().asnumpy()

    runners = {"eve_dense": eve_run("dense"), "eve_stage3": eve_run("stage3"), "floor": floor_run}
    for tokens in (new, 1):
        runners.update({f"{name}_gen{tokens}": run for name, run in torch_runners(hf_generate(tokens)).items()})
    times = interleaved_times(runners, spec["generate_repeats"], warmup=1)  # warm-up compiles the graphs
    for name in eve_steps:
        del calls[name][0]  # the warm-up's
    prefill = {name: [c[0] for c in calls[name]] for name in eve_steps}
    decode = {name: [median(c[1:]) for c in calls[name]] for name in eve_steps}
    torch_names = [n[:-len(f"_gen{new}")] for n in runners if n.endswith(f"_gen{new}")]
    hf_total = {n: median(times[f"{n}_gen{new}"]) for n in torch_names}
    best, _ = fastest_torch(hf_total)
    hf_prefill = times[f"{best}_gen1"]
    hf_decode = [(a - b) / (new - 1) for a, b in zip(times[f"{best}_gen{new}"], hf_prefill)]

    shape = f"batch {batch}, prompt {spec['prompt']}, cache {slots} slots"
    for name in eve_steps:
        report.add(f"prefill_tokens_per_s[{name}]", batch * spec["prompt"] / median(prefill[name]), "tok/s",
                   note=f"{shape}, {1e3 * median(prefill[name]):.1f} ms")
        report.add(f"decode_tokens_per_s[{name}]", batch / median(decode[name]), "tok/s",
                   note=f"{shape}, {1e3 * median(decode[name]):.2f} ms per step")
    report.add("prefill_tokens_per_s[transformers]", batch * spec["prompt"] / median(hf_prefill), "tok/s",
               note=f"{best}: generate of 1 token, {1e3 * median(hf_prefill):.1f} ms")
    report.add("decode_tokens_per_s[transformers]", batch / median(hf_decode), "tok/s",
               note=f"{best}: {1e3 * median(hf_decode):.2f} ms per step")
    report.add("decode_floor_ms", 1e3 * median(times["floor"]), "ms",
               note=f"{len(decode_products(config, batch, slots))} products of one decode step, one graph, "
                    "operands Parameters, their first elements read back")
    report.add("decode_tokens_per_s_over_transformers[dense]",
               paired_ratio(hf_decode, decode["dense"]), "x", ">= 0.5", note=f"against {best}")
    report.add("decode_step_over_floor[dense]", paired_ratio(decode["dense"], times["floor"]), "x", "<= 2")
    report.add("prefill_tokens_per_s_over_transformers[dense]", paired_ratio(hf_prefill, prefill["dense"]), "x",
               ">= 0.5", note=f"against {best}")
    report.add("generated_tokens_equal[dense,stage3]",
               float(np.array_equal(generated["dense"], generated["stage3"])), "bool", ">= 1")
    report.add("generated_tokens_equal[dense,transformers]",
               float(np.array_equal(generated["dense"], generated[f"hf{new}"])), "bool", ">= 1",
               note="transformers' generate on the weights export_hf_llm wrote")


def _eval_set(folder: str, count: int):
    """A GQA questions file and its images: short questions, the odd ones asked without their image."""
    import dataclasses
    import json
    import os

    from PIL import Image

    from eve_ms.eval import registry

    rng = np.random.default_rng(0)
    records = {}
    for i in range(count):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(os.path.join(folder, f"img{i}.jpg"))
        records[f"q{i}"] = {"imageId": f"img{i}", "question": EVAL_QUESTIONS[i % len(EVAL_QUESTIONS)],
                            "answer": "yes"}
    path = os.path.join(folder, "questions.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(records, fh)
    gqa = registry.get_benchmark("gqa")

    def load(data_path, image_folder):
        return [q if int(q.id[1:]) % 2 == 0 else dataclasses.replace(q, image=None)
                for q in gqa.load(data_path, image_folder)]

    return path, dataclasses.replace(gqa, name="gqa_bench", load=load, max_new_tokens=8)


def _eval_questions_per_second(spec, report) -> None:
    """`eve-ms eval`'s runner and predictor on the tiny Eve, in the command's CPU defaults (graph, float32,
    length bucket 64) and in its former ones (PyNative, float16), one after the other on the same set."""
    import json
    import os
    import tempfile

    import mindspore as ms

    from eve_ms.checkpoint_dir import save_eve_checkpoint
    from eve_ms.data.tokenizer import train_bpe_tokenizer
    from eve_ms.eval import registry
    from eve_ms.eval.run import GRAPH_LENGTH_BUCKET, PROTOCOL_COMPUTE_DTYPE, device_defaults
    from eve_ms.eval.runner import evaluate
    from eve_ms.inference.predictor import build_predictor
    from eve_ms.models.eve import EveForCausalLM

    defaults = device_defaults("CPU")
    settings = {"defaults": (defaults["exec_mode"], defaults["compute_dtype"]),
                "former": ("pynative", PROTOCOL_COMPUTE_DTYPE)}
    try:
        with tempfile.TemporaryDirectory() as root:
            tokenizer = train_bpe_tokenizer(EVAL_CORPUS * 4, vocab_size=300, save_dir=os.path.join(root, "tok"))
            config = eve_config("tiny", evf=True)
            config.llm.vocab_size = len(tokenizer)
            config.llm.max_position_embeddings = 512  # room for the v1 template's system prompt and the image
            ms.set_seed(0)
            model = EveForCausalLM(config)
            checkpoint = os.path.join(root, "checkpoint")
            save_eve_checkpoint(model, config, checkpoint, tokenizer=tokenizer)
            data, bench = _eval_set(root, spec["eval_questions"])
            registry.BENCHMARKS[bench.name] = bench
            answers, per_second = {}, {}
            try:
                for setting, (mode, dtype) in settings.items():
                    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
                    bucket = {"length_bucket": GRAPH_LENGTH_BUCKET} if mode == "graph" else {}
                    for batch_size in spec["eval_batches"]:
                        predictor = build_predictor(checkpoint, batch_size=batch_size, compute_dtype=dtype, **bucket)
                        # the warm-up asks an image question and a text-only one: both compile outside the timing
                        warm = os.path.join(root, f"warm_{setting}{batch_size}.jsonl")
                        evaluate(bench.name, data, root, predictor, warm, batch_size=batch_size, progress=False,
                                 limit=max(2, batch_size))
                        path = os.path.join(root, f"answers_{setting}{batch_size}.jsonl")
                        start = time.perf_counter()
                        evaluate(bench.name, data, root, predictor, path, batch_size=batch_size, progress=False)
                        seconds = time.perf_counter() - start
                        with open(path, encoding="utf-8") as fh:
                            answers[setting, batch_size] = [json.loads(line).get("prediction") for line in fh][1:]
                        per_second[setting, batch_size] = spec["eval_questions"] / seconds
                        report.add(f"eval_questions_per_s[tiny,batch {batch_size},{setting}]",
                                   per_second[setting, batch_size], "q/s",
                                   note=f"{spec['eval_questions']} GQA-format questions (half text-only), up to "
                                        f"{bench.max_new_tokens} new tokens, {mode}, {dtype}; "
                                        f"{seconds / spec['eval_questions']:.3f} s each")
            finally:
                registry.BENCHMARKS.pop(bench.name, None)
            for batch_size in spec["eval_batches"]:
                former = answers["former", batch_size]
                report.add(f"eval_speedup_over_former_defaults[batch {batch_size}]",
                           per_second["defaults", batch_size] / per_second["former", batch_size], "x",
                           note=f"answers equal: {former == answers['defaults', batch_size]}; former defaults' "
                                f"empty answers: {sum(a == '' for a in former)} of {len(former)}")
            first = spec["eval_batches"][0]
            report.add("eval_answers_equal_across_batch_sizes[defaults]",
                       float(all(answers["defaults", b] == answers["defaults", first] for b in spec["eval_batches"])),
                       "bool", ">= 1")
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
