"""`eve-ms eval`: evaluate a checkpoint on one benchmark, resumably, into an output folder.

Writes `<output>/<benchmark>_answers.jsonl` (appended as answers come; rerunning the same
command resumes) and `<output>/<benchmark>_results.json`. The model is reached through
`load_predictor`, which imports the inference module only when a run needs it.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os

from eve_ms.eval.registry import BENCHMARKS
from eve_ms.eval.runner import evaluate


def load_predictor(checkpoint_dir: str, **kw):
    """The model behind `predict`/`loglik`, from `eve_ms.inference.predictor.build_predictor`."""
    try:
        module = importlib.import_module("eve_ms.inference.predictor")
    except ModuleNotFoundError as err:
        if err.name != "eve_ms.inference.predictor":
            raise
        raise RuntimeError("eve_ms.inference.predictor is not available: the model predictor for "
                           "`eve-ms eval --checkpoint` is not installed in this build") from None
    return module.build_predictor(checkpoint_dir, **kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS), help="benchmark to run")
    parser.add_argument("--data", required=True, help="benchmark file or folder in its released format")
    parser.add_argument("--image-folder", default=None, help="folder the benchmark's image paths are relative to")
    parser.add_argument("--checkpoint", required=True, help="model checkpoint folder")
    parser.add_argument("--output", required=True, help="folder for the answers JSONL and the results JSON")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per model call")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    predictor = load_predictor(args.checkpoint, batch_size=args.batch_size)
    result = evaluate(
        args.benchmark, args.data, args.image_folder, predictor,
        answers_jsonl=os.path.join(args.output, f"{args.benchmark}_answers.jsonl"),
        limit=args.limit, batch_size=args.batch_size,
        results_json=os.path.join(args.output, f"{args.benchmark}_results.json"),
        progress=not args.no_progress,
    )
    print(json.dumps({"benchmark": result["benchmark"], "questions": result["questions"], "score": result["score"]}))
    return 0
