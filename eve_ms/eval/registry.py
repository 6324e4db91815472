"""The benchmarks `eve-ms eval` knows: name -> loader, prompt builder, scorer and answer mode.

A plain dict: MindFormers has no evaluation registry to join. `mode` says how the model
answers: "generate" (free text from `predictor.predict`) or "loglik" (one log-likelihood
per continuation from `predictor.loglik`). Every scorer returns a dict whose "score" is
the number the paper's tables report for that benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from eve_ms.eval import gqa, language, mmbench, mme, pope, scienceqa, textvqa, xsum
from eve_ms.eval.question import Question


@dataclass(frozen=True)
class Benchmark:
    name: str
    load: Callable[[str, str | None], list[Question]]
    build_prompt: Callable[[Question], str]
    score: Callable[[list[Question], dict[str, Any]], dict]
    mode: str = "generate"
    max_new_tokens: int = 16  # a hint to the predictor for generated answers


def _module(name: str, module, **kw) -> Benchmark:
    return Benchmark(name, module.load, module.build_prompt, module.score, **kw)


def _choice(name: str, load, build_prompt) -> Benchmark:
    return Benchmark(name, load, build_prompt, language.score, mode="loglik", max_new_tokens=0)


BENCHMARKS: dict[str, Benchmark] = {
    "gqa": _module("gqa", gqa),
    "scienceqa_img": _module("scienceqa_img", scienceqa),
    "textvqa": _module("textvqa", textvqa),
    "pope": _module("pope", pope),
    "mme": _module("mme", mme),
    "mmbench": _module("mmbench", mmbench),
    "mmlu": _choice("mmlu", language.load_mmlu, language.prompt_mmlu),
    "ceval": _choice("ceval", language.load_ceval, language.prompt_ceval),
    "cmmlu": _choice("cmmlu", language.load_cmmlu, language.prompt_cmmlu),
    "boolq": _choice("boolq", language.load_boolq, language.prompt_boolq),
    "piqa": _choice("piqa", language.load_piqa, language.prompt_piqa),
    "eprstmt": _choice("eprstmt", language.load_eprstmt, language.prompt_eprstmt),
    "ax_b": _choice("ax_b", language.load_axb, language.prompt_axb),
    "xsum": _module("xsum", xsum, max_new_tokens=64),
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
