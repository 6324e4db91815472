"""`eve-ms demo`: the whole method end to end on a tiny model, with the paper's claims in miniature.

It goes through exactly what a user runs: the data is LLaVA-format JSON and PNG files on disk,
each stage is a run yaml that inherits `yaml_configs/tiny/<stage>.yaml` (the demo overrides
only paths, step counts and learning rates), trained by `eve_ms.training.launch.train`.

    data        synthetic shapes world + text world            (eve_ms/demo/synthetic.py)
    stage 0     pretrain the tiny LLM on the text corpus        (stands in for PanGu-pi)
    stage 1     adapter on captions
    stage 2     adapter + MindFormers LoRA on instructions      -> LoRA merged
    stage 3     EVF layers with Img-GBPR; ablations: random, gbpr, and the MoE x2top1 baseline
    evaluate    VQA accuracy, language accuracy/loss, token success rate per EVF layer
    report      report.json, report.md, PNG plots, and the table printed at the end
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import yaml

from eve_ms.demo import synthetic

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "yaml_configs", "tiny")


@dataclass(frozen=True)
class DemoPlan:
    """Data sizes and optimizer steps of one demo run (the only numbers the demo chooses itself)."""

    caption_images: int
    instruct_images: int
    eval_images: int
    steps: dict  # run name -> optimizer steps
    learning_rates: dict  # run name -> peak lr
    ablations: bool
    # Share of text-only samples in the instruction set. They keep the language path trained in
    # stages 2 and 3, but a text-only batch is a second graph to compile (about 11 s per stage),
    # which the quick plan cannot afford.
    text_only_fraction: float = 0.1
    # Objects per scene, 1..max_objects; count questions need more than one.
    max_objects: int = 1
    # Stage 0's sequence length: it runs before its tokenizer exists, so this is a bound that
    # `longest_samples` checks afterwards (stages 1-3 use the measured lengths).
    text_max_length: int = 24


PLANS = {
    "full": DemoPlan(caption_images=2000, instruct_images=8000, eval_images=80,
                     steps={"stage0": 400, "stage1": 200, "stage2": 400, "stage3": 200},
                     learning_rates={"stage0": 3e-3, "stage1": 1e-2, "stage2": 3e-3, "stage3": 1e-3},
                     ablations=True, max_objects=2, text_max_length=32),
    "quick": DemoPlan(caption_images=600, instruct_images=3000, eval_images=40,
                      steps={"stage0": 250, "stage1": 100, "stage2": 130, "stage3": 50},
                      learning_rates={"stage0": 3e-3, "stage1": 1e-2, "stage2": 3e-3, "stage3": 1e-3},
                      ablations=False, text_only_fraction=0.0),
}

# run name -> (tiny yaml it inherits, stage output it starts from, data file key)
RUNS = {
    "stage0": ("stage0_llm.yaml", None, "text_train"),
    "stage1": ("stage1.yaml", "stage0", "captions"),
    "stage2": ("stage2.yaml", "stage1", "instruct"),
    "stage3": ("stage3.yaml", "stage2", "instruct"),
    "stage3_random": ("stage3.yaml", "stage2", "instruct"),
    "stage3_gbpr": ("stage3.yaml", "stage2", "instruct"),
    "stage3_moe": ("stage3_moe.yaml", "stage2", "instruct"),
}
# Sequence lengths fit the demo data: padding to the tiny yamls' generic 192 would make every step
# several times slower (see DemoPlan.text_max_length and longest_samples).
TEMPLATES = {"text_train": "plain", "captions": "plain", "instruct": "v1"}
STRATEGY = {"stage3": "img_gbpr", "stage3_random": "random", "stage3_gbpr": "gbpr", "stage3_moe": "gbpr"}


def longest_samples(paths: dict, stage0_dir: str, text_max_length: int) -> dict:
    """Data key -> token length of its longest sample, by the checks of `eve-ms data check`."""
    from eve_ms.checkpoint_dir import read_eve_config
    from eve_ms.data import ImageProcessor, get_template, load_tokenizer
    from eve_ms.data.check import check_dataset
    from eve_ms.data.samples import SampleEncoder

    config = read_eve_config(stage0_dir)
    tokenizer = load_tokenizer(os.path.join(stage0_dir, "tokenizer"))
    longest = {}
    for key, template in TEMPLATES.items():
        encoder = SampleEncoder(get_template(template), tokenizer, config.num_image_tokens, 1 << 20,
                                ImageProcessor.from_vision_config(config.vision), paths["image_folder"])
        result = check_dataset(paths[key], encoder, decode_images=False, keep_details=False)
        if not result.ok:
            raise RuntimeError(f"demo data set {paths[key]} has problems:\n{result.format()}")
        longest[key] = max(result.lengths)
    if longest["text_train"] > text_max_length:
        raise RuntimeError(f"{paths['text_train']}: a sample of {longest['text_train']} tokens was truncated to "
                           f"stage 0's max_length {text_max_length}; raise DemoPlan.text_max_length")
    return longest


def write_run_yaml(name: str, out_dir: str, paths: dict, plan: DemoPlan, tokenizer_dir: str | None,
                   max_length: int) -> str:
    """A run yaml inheriting the tiny stage yaml; returns its path."""
    base, init, data_key = RUNS[name]
    steps_key = "stage3" if name.startswith("stage3") else name
    run = {
        "base_config": os.path.join(REPO_CONFIGS, base),
        "output_dir": os.path.join(out_dir, name),
        "load_checkpoint": os.path.join(out_dir, init) if init else None,
        "runner_config": {"epochs": 1000, "batch_size": 16},
        "lr_schedule": {"learning_rate": plan.learning_rates[steps_key], "total_steps": plan.steps[steps_key]},
        "checkpoint": {"save_checkpoint_steps": 10_000},  # the demo keeps only each stage's final weights
        "logging": {"progress_bar": True, "plot_at_end": False},
        "data": {"data_path": paths[data_key], "image_folder": paths["image_folder"],
                 "tokenizer_path": tokenizer_dir or "", "max_length": max_length},
    }
    if name == "stage0":
        run["task_options"] = {"tokenizer_vocab_size": 512,
                               "tokenizer_corpus": [paths["captions"], paths["instruct"]]}
    if name.startswith("stage3"):
        run["model"] = {"model_config": {"evf": {"enabled": True, "strategy": STRATEGY[name]}}}
    os.makedirs(os.path.join(out_dir, "configs"), exist_ok=True)
    path = os.path.join(out_dir, "configs", f"{name}.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(run, fh, sort_keys=False)
    return path


def train_run(name: str, config_path: str, log) -> float:
    from eve_ms.training.config import load_train_config
    from eve_ms.training.launch import train

    start = time.time()
    log(f"\n== {name}: {config_path}")
    train(load_train_config(config_path))
    return time.time() - start


def evaluate_run(name: str, out_dir: str, paths: dict, evalset, log) -> dict:
    """Every measurement of one stage's output."""
    from eve_ms.demo import evaluate

    directory = os.path.join(out_dir, name, "merged") if name == "stage2" else os.path.join(out_dir, name)
    model, config, tokenizer = evaluate.load_stage_model(directory)
    result = {}
    if name != "stage0":  # the text-only LLM has no adapter trained yet
        result["vqa"] = evaluate.vqa_accuracy(model, config, tokenizer, evalset.vqa, paths["image_folder"], 64)
    if name != "stage1":  # stage 1 leaves the LLM as stage 0 made it
        if config.evf.enabled and config.evf.mode != "moe":
            model.set_evf_mode("language_only")
        result["language"] = evaluate.language_scores(model, tokenizer, evalset)
    parts = [f"VQA {result['vqa']['accuracy']:.3f}"] if "vqa" in result else []
    if "language" in result:
        parts.append(f"language accuracy {result['language']['accuracy']:.3f}")
    log(f"   {name}: " + ", ".join(parts))
    return result


def language_bit_identity(out_dir: str, evalset) -> dict:
    """Language-only logits of the stage-3 EVF model vs the stage-2 (LoRA-merged) model, compared exactly."""
    import numpy as np

    from eve_ms.demo import evaluate

    dense, _, tokenizer = evaluate.load_stage_model(os.path.join(out_dir, "stage2", "merged"))
    evf, _, _ = evaluate.load_stage_model(os.path.join(out_dir, "stage3"), evf_mode="language_only")
    texts = evalset.language_sentences + [q["context"] + q["options"][q["answer"]] for q in evalset.language_questions]
    dense_logits, _, mask = evaluate.language_logits(dense, tokenizer, texts)
    evf_logits, _, _ = evaluate.language_logits(evf, tokenizer, texts)
    real = mask.astype(bool)
    diff = np.abs(dense_logits[real] - evf_logits[real])
    return {"texts": len(texts), "tokens": int(real.sum()), "bit_identical": bool(np.array_equal(
        dense_logits[real], evf_logits[real])), "max_abs_diff": float(diff.max())}


def run_demo(out_dir: str, quick: bool = False, seed: int = 0, log=print) -> dict:
    """Run everything; returns the report (also written to out_dir)."""
    from eve_ms.demo import evaluate, report

    plan = PLANS["quick" if quick else "full"]
    started = time.time()
    os.makedirs(out_dir, exist_ok=True)
    log(f"eve-ms demo ({'quick' if quick else 'full'}) -> {out_dir}")
    paths = synthetic.generate(os.path.join(out_dir, "data"), seed=seed, image_size=32,
                               num_caption=plan.caption_images, num_instruct_images=plan.instruct_images,
                               num_eval_images=plan.eval_images, num_text_descriptions=400,
                               num_text_scene_questions=400, text_only_fraction=plan.text_only_fraction,
                               max_objects=plan.max_objects)
    evalset = evaluate.load_eval_set(paths)

    names = ["stage0", "stage1", "stage2", "stage3"]
    if plan.ablations:
        names += ["stage3_random", "stage3_gbpr", "stage3_moe"]
    timings, results = {}, {}
    lengths = {"text_train": plan.text_max_length}
    for name in names:
        tokenizer_dir = None if name == "stage0" else os.path.join(out_dir, "stage0", "tokenizer")
        config_path = write_run_yaml(name, out_dir, paths, plan, tokenizer_dir, lengths[RUNS[name][2]])
        timings[name] = train_run(name, config_path, log)
        results[name] = evaluate_run(name, out_dir, paths, evalset, log)
        if name == "stage0":
            lengths = longest_samples(paths, os.path.join(out_dir, "stage0"), plan.text_max_length)
            log(f"   longest samples (tokens): {lengths}")

    summary = {
        "mode": "quick" if quick else "full",
        "seed": seed,
        "plan": asdict(plan),
        "vqa_chance": synthetic.chance_accuracy(evalset.vqa),
        "results": results,
        "language_only_bit_identity": language_bit_identity(out_dir, evalset),
        "train_seconds": timings,
        "total_seconds": None,
    }
    summary["claims"] = report.check_claims(summary)
    summary["total_seconds"] = time.time() - started
    report.write_reports(summary, out_dir)
    log("\n" + report.table(summary))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="eve_demo", help="output folder (data, stage checkpoints, report)")
    parser.add_argument("--quick", action="store_true", help="a smaller run (about 3 minutes) without ablations")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    summary = run_demo(args.out, quick=args.quick, seed=args.seed)
    failed = [name for name, ok in summary["claims"].items() if not ok]
    if failed:
        print(f"eve-ms demo: claims not met: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
