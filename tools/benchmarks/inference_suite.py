"""Suite `inference`: language-only inference of the converted stage-3 model, and KV-cache generation.

The stage-3 model is `convert_dense_to_evf(dense)` switched to `language_only` (DESIGN: text-only
inputs run the language FFN alone, bit-identical to the dense model). Side by side in graph mode:
full-sequence forward tokens/s of both (target: within 2%), and greedy generation with the static
KV cache (`LLMDecodeStep` + `greedy_generate`), the prefill and each decode step timed apart.
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks.common import PRESETS, Report, interleaved_times, median, paired_ratio

SIZES = {"default": {"preset": "small", "batch": 4, "length": 128, "prompt": 64, "new_tokens": 32, "repeats": 21,
                     "generate_repeats": 2},
         "quick": {"preset": "tiny", "batch": 2, "length": 32, "prompt": 16, "new_tokens": 8, "repeats": 3,
                   "generate_repeats": 1}}


class TimedStep:
    """Wraps an `LLMDecodeStep` for `greedy_generate`: records the seconds of every call (prefill first)."""

    def __init__(self, step):
        self.step = step
        self.llm = step.llm
        self.seconds = []

    def __call__(self, *args):
        start = time.perf_counter()
        logits, keys, values = self.step(*args)
        logits.asnumpy()
        self.seconds.append(time.perf_counter() - start)
        return logits, keys, values


def run(size: str, report: Report) -> None:
    import mindspore as ms

    from eve_ms.config import EVFConfig, LLMConfig
    from eve_ms.models.evf_convert import convert_dense_to_evf
    from eve_ms.models.llm import LLM, LLMDecodeStep, greedy_generate

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
    steps = {"dense": TimedStep(LLMDecodeStep(dense)), "stage3": TimedStep(LLMDecodeStep(stage3))}
    generated, prefill, decode = {}, {name: [] for name in steps}, {name: [] for name in steps}
    for round_index in range(1 + spec["generate_repeats"]):  # round 0 compiles the prefill and decode graphs
        for name, step in steps.items():
            step.seconds.clear()
            generated[name] = greedy_generate(step, prompt, mask, spec["new_tokens"])
            if round_index:
                prefill[name].append(step.seconds[0])
                decode[name].extend(step.seconds[1:])
    for name in steps:
        prefill_s, decode_s = median(prefill[name]), median(decode[name])
        report.add(f"prefill_tokens_per_s[{name}]", spec["batch"] * spec["prompt"] / prefill_s, "tok/s",
                   note=f"prompt {spec['batch']} x {spec['prompt']}, {1e3 * prefill_s:.1f} ms")
        report.add(f"decode_tokens_per_s[{name}]", spec["batch"] / decode_s, "tok/s",
                   note=f"batch {spec['batch']}, {1e3 * decode_s:.2f} ms per step, cache "
                        f"{spec['prompt'] + spec['new_tokens']} slots")
    report.add("generated_tokens_equal[dense,stage3]", float(np.array_equal(generated["dense"], generated["stage3"])),
               "bool", ">= 1")
