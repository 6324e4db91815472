"""Benchmark evaluation: loaders for the released formats, prompts, scorers, the resumable runner.

Public entry points: `evaluate` (runner), `BENCHMARKS` (registry), `vlm_average` and
`language_average` (the paper's AVG columns). `eve-ms eval` is `eve_ms.eval.run`.
"""
from eve_ms.eval.averages import language_average, vlm_average
from eve_ms.eval.registry import BENCHMARKS, Benchmark, get_benchmark
from eve_ms.eval.runner import evaluate

__all__ = ["BENCHMARKS", "Benchmark", "evaluate", "get_benchmark", "language_average", "vlm_average"]
