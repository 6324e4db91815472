"""`eve-ms eval`: evaluate a checkpoint on one benchmark, resumably, into an output folder.

Writes `<output>/<benchmark>_answers.jsonl` (its first line records what produced it; answers are
appended as they come, and rerunning the same command resumes) and `<output>/<benchmark>_results.json`.
MindSpore's context is set up as `eve-ms chat` sets it (device target, execution mode, threads).
The defaults are the paper's protocol: the `v1` template (`CONV_MODE=v1` in the Eve release's
`scripts/v1/zhizi/test_eve.sh`), float16 compute (the dtype LLaVA, MoE-LLaVA, the Eve release and
OpenCompass's HF models evaluate in), each benchmark's generation budget and shots
(`eve_ms.eval.registry`) and ppl choice scoring.

On CPU the execution mode and compute dtype default to graph and float32 instead (`device_defaults`):
there PyNative dispatches every operator from Python (tens of milliseconds per decode step of the tiny
model), MindSpore's CPU float16 kernels ran 2.5-4x slower than float32 on the tiny Eve, and its PyNative
float16 path turned the tiny Eve's GQA prompts into NaN logits, every answer empty (fixed since: the
attention mask's value, eve_ms/models/llm.py). Graph mode gives
PyNative's float32 answers and scores (tests/inference/test_predictor.py). The model is reached through
`load_predictor`, which imports the inference module only when a run needs it.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys

from eve_ms.eval.choice import SCORINGS
from eve_ms.eval.provenance import file_sha256
from eve_ms.eval.registry import BENCHMARKS
from eve_ms.eval.runner import evaluate
from eve_ms.training.config import COMPUTE_DTYPES

PROTOCOL_COMPUTE_DTYPE = "float16"
GRAPH_LENGTH_BUCKET = 64  # as `eve-ms chat`: graph mode compiles one graph per padded length


def device_defaults(device_target: str, compute_dtype: str | None = None) -> dict:
    """The execution mode and compute dtype `eve-ms eval` uses on a device unless told otherwise.

    CPU: graph and float32 (the module docstring says why); GPU / Ascend: PyNative and the protocol's
    float16, as before. A dtype other than float32 keeps PyNative on CPU too: graph-mode float16
    generation gives PyNative float16's tokens (tests/inference/test_predictor.py, after two fixes: the KV
    cache's dtype, the patch embedding's weight cast), but graph float16 choice scoring is not tested."""
    if device_target == "CPU":
        dtype = compute_dtype or "float32"
        return {"exec_mode": "graph" if dtype == "float32" else "pynative", "compute_dtype": dtype}
    return {"exec_mode": "pynative", "compute_dtype": compute_dtype or PROTOCOL_COMPUTE_DTYPE}


def load_predictor(checkpoint_dir: str, **kw):
    """The model behind `predict`/`ppl`/`loglik`, from `eve_ms.inference.predictor.build_predictor`."""
    try:
        module = importlib.import_module("eve_ms.inference.predictor")
    except ModuleNotFoundError as err:
        if err.name != "eve_ms.inference.predictor":
            raise
        raise RuntimeError("eve_ms.inference.predictor is not available: the model predictor for "
                           "`eve-ms eval --checkpoint` is not installed in this build") from None
    return module.build_predictor(checkpoint_dir, **kw)


def model_provenance(checkpoint_dir: str, template: str, compute_dtype: str) -> dict:
    """The checkpoint as an answers file records it: its path, the SHA-256 of its weights, how it runs."""
    from eve_ms.checkpoint_dir import WEIGHTS_FILE

    weights = os.path.join(checkpoint_dir, WEIGHTS_FILE)
    return {"checkpoint": os.path.abspath(checkpoint_dir),
            "weights_sha256": file_sha256(weights) if os.path.exists(weights) else None,
            "template": template, "compute_dtype": compute_dtype}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from eve_ms.data.templates import TEMPLATES

    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS), help="benchmark to run")
    parser.add_argument("--data", required=True, help="benchmark file or folder in its released format")
    parser.add_argument("--image-folder", default=None, help="folder the benchmark's image paths are relative to")
    parser.add_argument("--checkpoint", required=True, help="model checkpoint folder")
    parser.add_argument("--output", required=True, help="folder for the answers JSONL and the results JSON")
    parser.add_argument("--overwrite", action="store_true",
                        help="start the answers file over instead of resuming it")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per model call")
    parser.add_argument("--template", default="v1", choices=sorted(TEMPLATES),
                        help="conversation template of the VLM benchmarks (default v1, the Eve release's)")
    parser.add_argument("--compute-dtype", default=None, choices=COMPUTE_DTYPES,
                        help="dtype the model computes in (default float16, the protocol's; float32 on CPU)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="longest generated answer (default: the benchmark's protocol, 128 / 1024 / 100)")
    parser.add_argument("--shots", type=int, default=None,
                        help="in-context examples of MMLU / C-Eval / CMMLU (default: the protocol's 5)")
    parser.add_argument("--choice-scoring", default="ppl", choices=SCORINGS,
                        help="multiple choice: ppl (mean loss of the whole text, the protocol) or loglik "
                             "(summed log-likelihood of the answer)")
    parser.add_argument("--device-target", default=None,
                        help="CPU | GPU | Ascend (default: $EVE_DEVICE_TARGET, else CPU)")
    parser.add_argument("--exec-mode", default=None, choices=["pynative", "graph"],
                        help="MindSpore execution mode (graph compiles each new shape once; default graph on "
                             "CPU in float32, pynative otherwise)")
    parser.add_argument("--num-threads", type=int, default=None,
                        help="CPU runtime threads (default: the cores, at most 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from eve_ms import runtime

    defaults = device_defaults(runtime.resolve_device_target(args.device_target), args.compute_dtype)
    exec_mode = args.exec_mode or defaults["exec_mode"]
    compute_dtype = defaults["compute_dtype"]
    # libraries that log to stdout while they load log to stderr: stdout carries the result line only
    with contextlib.redirect_stdout(sys.stderr):
        runtime.setup_context(args.device_target, exec_mode, args.num_threads)
        bucket = {"length_bucket": GRAPH_LENGTH_BUCKET} if exec_mode == "graph" else {}
        predictor = load_predictor(args.checkpoint, batch_size=args.batch_size, template=args.template,
                                   compute_dtype=compute_dtype, **bucket)
        result = evaluate(
            args.benchmark, args.data, args.image_folder, predictor,
            answers_jsonl=os.path.join(args.output, f"{args.benchmark}_answers.jsonl"),
            model=model_provenance(args.checkpoint, args.template, compute_dtype),
            max_new_tokens=args.max_new_tokens, shots=args.shots, scoring=args.choice_scoring,
            overwrite=args.overwrite, limit=args.limit, batch_size=args.batch_size,
            results_json=os.path.join(args.output, f"{args.benchmark}_results.json"),
            progress=not args.no_progress,
        )
    summary = {"benchmark": result["benchmark"], "questions": result["questions"], "score": result["score"]}
    summary.update({k: result["metrics"][k] for k in ("truncated", "shots_reduced") if k in result["metrics"]})
    print(json.dumps(summary))
    return 0
