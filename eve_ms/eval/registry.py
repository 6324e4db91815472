"""The benchmarks `eve-ms eval` knows: name -> loader, prompt, scorer, answer mode and protocol settings.

A plain dict: MindFormers has no evaluation registry to join. `mode` says how the model
answers: "generate" (free text from `predictor.predict`) or "choice" (one score per candidate
text: `predictor.ppl`, or `predictor.loglik` with `--choice-scoring loglik`). Every scorer
returns a dict whose "score" is the number the paper's tables report for that benchmark.

Protocol settings, from the scripts that produced the paper's numbers:
- `max_new_tokens`: 128 for the short-answer VLM benchmarks (`--max_new_tokens` default of
  `model_vqa_loader.py` in LLaVA, MoE-LLaVA and the Eve release, which their gqa/textvqa/pope/mme
  scripts leave as is); 1024 for ScienceQA and MMBench (hard-coded in `model_vqa_science.py` and
  `model_vqa_mmbench.py` of all three); 100 for XSum (`max_out_len` of OpenCompass's base-model
  configs, e.g. `configs/models/hf_llama/hf_llama2_7b.py`).
- `chat`: whether the prompt goes through the conversation template (the VLM benchmarks, as
  LLaVA's `conv_templates`); the language benchmarks treat the model as a base LM (plain text).
- `shots`: in-context examples of the subject benchmarks (OpenCompass's FixKRetriever, 5).
- `truncate`: a prompt too long for the context keeps its end (OpenCompass's HF models tokenize
  with `truncation_side='left'`), counted in the results, instead of stopping the run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from eve_ms.eval import choice, gqa, language, mmbench, mme, opencompass, pope, scienceqa, textvqa, xsum
from eve_ms.eval.question import Question

SHORT_ANSWER_TOKENS = 128
LONG_ANSWER_TOKENS = 1024
XSUM_TOKENS = 100


@dataclass(frozen=True)
class Benchmark:
    name: str
    load: Callable[[str, str | None], list[Question]]
    score: Callable[..., dict]
    build_prompt: Callable[[Question], str] | None = None  # generate mode
    candidates: Callable[[Question, int], list[tuple[str, str]]] | None = None  # choice mode
    mode: str = "generate"
    max_new_tokens: int = SHORT_ANSWER_TOKENS
    chat: bool = True
    shots: int = 0
    truncate: bool = False


def _vlm(name: str, module, max_new_tokens: int = SHORT_ANSWER_TOKENS) -> Benchmark:
    return Benchmark(name, module.load, module.score, build_prompt=module.build_prompt, max_new_tokens=max_new_tokens)


def _choice(name: str, load, candidates, shots: int = 0) -> Benchmark:
    def score(questions, responses, scoring):
        return choice.score(questions, responses, scoring, subjects=language.SUBJECT_LISTS.get(name))
    return Benchmark(name, load, score, candidates=candidates, mode="choice", max_new_tokens=0, chat=False,
                     shots=shots)


BENCHMARKS: dict[str, Benchmark] = {
    "gqa": _vlm("gqa", gqa),
    "scienceqa_img": _vlm("scienceqa_img", scienceqa, LONG_ANSWER_TOKENS),
    "textvqa": _vlm("textvqa", textvqa),
    "pope": _vlm("pope", pope),
    "mme": _vlm("mme", mme),
    "mmbench": _vlm("mmbench", mmbench, LONG_ANSWER_TOKENS),
    "mmlu": _choice("mmlu", language.load_mmlu, opencompass.mmlu, opencompass.MMLU_SHOTS),
    "ceval": _choice("ceval", language.load_ceval, opencompass.ceval, opencompass.CEVAL_SHOTS),
    "cmmlu": _choice("cmmlu", language.load_cmmlu, opencompass.cmmlu, opencompass.CMMLU_SHOTS),
    "boolq": _choice("boolq", language.load_boolq, opencompass.boolq),
    "piqa": _choice("piqa", language.load_piqa, opencompass.piqa),
    "eprstmt": _choice("eprstmt", language.load_eprstmt, opencompass.eprstmt),
    "ax_b": _choice("ax_b", language.load_axb, opencompass.axb),
    "xsum": Benchmark("xsum", xsum.load, xsum.score, build_prompt=xsum.build_prompt, max_new_tokens=XSUM_TOKENS,
                      chat=False, truncate=True),
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
