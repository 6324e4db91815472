"""`eve-ms demo`: the whole method end to end on a tiny model, with the paper's claims in miniature.

It goes through exactly what a user runs: the data is LLaVA-format JSON and PNG files on disk,
each stage is a run yaml that inherits `yaml_configs/tiny/<stage>.yaml` (the demo overrides
only paths, image size, LoRA rank, step counts, learning rates and seeds), trained by
`eve_ms.training.launch.train`.

    data        synthetic shapes world + text world            (eve_ms/demo/synthetic.py)
    stage 0     pretrain the tiny LLM on the text corpus        (stands in for PanGu-pi)
    stage 1     adapter on captions
    stage 2     adapter + light MindFormers LoRA on instructions (10 % text-only) -> LoRA merged
    stage 3     EVF layers on multimodal instructions: Img-GBPR, ablations Random and GBPR, the
                MoE x2top1 baseline; each with every seed of the plan
    evaluate    VQA accuracy, language accuracy/loss; routing per EVF layer and modality from
                the stage-3 training logs
    report      report.json (claims), report.md, PNG plots, and the table printed at the end
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import yaml

from eve_ms.demo import synthetic
from eve_ms.demo.runs import VARIANT_RUN, VARIANTS, run_name

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "yaml_configs", "tiny")


@dataclass(frozen=True)
class DemoPlan:
    """Data sizes, model overrides and optimizer steps of one demo run (the only numbers the demo chooses)."""

    caption_images: int
    instruct_images: int
    eval_images: int
    steps: dict  # stage -> optimizer steps ("stage3": every stage-3 variant unless variant_steps says)
    learning_rates: dict  # stage -> peak lr
    variants: tuple = VARIANTS  # stage-3 variants trained
    seeds: tuple = (0, 1, 2)  # each stage-3 variant runs once per seed (stages 0-2 once, shared)
    evaluated: tuple = VARIANTS  # variants scored on VQA and language (the others: routing only)
    variant_steps: dict = field(default_factory=dict)  # variant -> steps, overriding steps["stage3"]
    claims: tuple = ()  # the claims this plan reports (empty: every claim its runs measure)
    # Share of text-only instructions in stage 2 (LLaVA's 665k mix: 40k ShareGPT, 6 %). Stage 2
    # mixes them into image batches (data.group_by_modality false): one graph to compile.
    text_only_fraction: float = 0.1
    # Objects per scene, 1..max_objects; count questions need more than one.
    max_objects: int = 1
    # Stage 0's sequence length: it runs before its tokenizer exists, so this is a bound that
    # `longest_samples` checks afterwards (stages 1-3 use the measured lengths).
    text_max_length: int = 24
    # The image: 48 x 48 pixels in patches of 4, a 12 x 12 grid that the LDP turns into 6 x 6 = 36
    # image tokens, about 40 % of an instruction sample's tokens (the paper: 144 per image).
    image_size: int = 48
    patch_size: int = 4
    image_tokens: int = 36  # what the tiny yamls' LDP (2 x 2 downsampling) makes of that grid
    # Stage 2's LoRA (light: rank and lr keep the LLM's language, see docs/design.md)
    lora_rank: int = 4
    lora_alpha: int = 8
    # A run of at most this many steps trains in PyNative: its graph compile (12-20 s for stage 3)
    # costs more than graph mode saves per step (stage 3: 0.23 s graph vs 1.25 s PyNative, load 5-6)
    eager_max_steps: int = 10


# Stage 3's learning rate equals stage 2's, as in the paper's Table 2 (2e-5 both): at 1e-3 the quick
# plan's 40 stage-3 steps took VQA from 0.406 to 0.338 (colour 0.30 -> 0.10) while changing nothing else.
PLANS = {
    "full": DemoPlan(caption_images=2000, instruct_images=8000, eval_images=80,
                     steps={"stage0": 800, "stage1": 200, "stage2": 150, "stage3": 40},
                     learning_rates={"stage0": 3e-3, "stage1": 1e-2, "stage2": 5e-4, "stage3": 5e-4},
                     max_objects=2, text_max_length=32),
    "quick": DemoPlan(caption_images=400, instruct_images=2000, eval_images=40,
                      steps={"stage0": 200, "stage1": 60, "stage2": 60, "stage3": 20},
                      learning_rates={"stage0": 3e-3, "stage1": 1e-2, "stage2": 5e-4, "stage3": 5e-4},
                      variants=("img_gbpr", "random"), seeds=(0,), evaluated=("img_gbpr",),
                      variant_steps={"random": 8},
                      # one seed and 30 stage-3 steps: the claims about the pipeline and the regime, not
                      # the comparisons between strategies (those need the full plan's seeds)
                      claims=("lora_keeps_language", "evf_keeps_language", "capacity_binds")),
}

# Sequence lengths fit the demo data: padding to the tiny yamls' generic 192 would make every step
# several times slower (see DemoPlan.text_max_length and longest_samples). Stage 3's samples all
# have one image, one question and a one- or two-token answer: they fill their length to within a
# few tokens, so the capacity (1.5 x B x S / 2 slots per expert) is measured against real tokens.
TEMPLATES = {"text_train": "plain", "captions": "plain", "instruct": "v1", "instruct_multimodal": "v1"}
STAGE3_YAML = {"img_gbpr": "stage3.yaml", "gbpr": "stage3.yaml", "random": "stage3.yaml", "moe": "stage3_moe.yaml"}


def run_spec(name: str) -> tuple:
    """run name -> (tiny yaml it inherits, stage output it starts from, data file key, variant, seed)."""
    fixed = {"stage0": ("stage0_llm.yaml", None, "text_train"), "stage1": ("stage1.yaml", "stage0", "captions"),
             "stage2": ("stage2.yaml", "stage1", "instruct")}
    if name in fixed:
        return fixed[name] + (None, None)
    base, _, seed = name.partition("_seed")
    variant = next(v for v, run in VARIANT_RUN.items() if run == base)
    return STAGE3_YAML[variant], "stage2", "instruct_multimodal", variant, int(seed or 0)


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
    base, init, data_key, variant, seed = run_spec(name)
    stage = "stage3" if variant else name
    steps = plan.variant_steps.get(variant, plan.steps[stage]) if variant else plan.steps[stage]
    vision = {"image_size": plan.image_size, "patch_size": plan.patch_size}
    run = {
        "base_config": os.path.join(REPO_CONFIGS, base),
        "output_dir": os.path.join(out_dir, name),
        "load_checkpoint": os.path.join(out_dir, init) if init else None,
        "runner_config": {"epochs": 1000, "batch_size": 16},
        "lr_schedule": {"learning_rate": plan.learning_rates[stage], "total_steps": steps},
        "checkpoint": {"save_checkpoint_steps": 10_000},  # the demo keeps only each stage's final weights
        "logging": {"progress_bar": True, "plot_at_end": False},
        "model": {"model_config": {"vision": vision}},
        "data": {"data_path": paths[data_key], "image_folder": paths["image_folder"],
                 "tokenizer_path": tokenizer_dir or "", "max_length": max_length},
    }
    if name == "stage0":
        run["task_options"] = {"tokenizer_vocab_size": 512,
                               "tokenizer_corpus": [paths["captions"], paths["instruct"]]}
        # text only, but data.max_length must leave room after an image's tokens: the bound is a
        # bucket that every (checked) text sample fits, so batches stay max_length long
        run["data"]["length_buckets"] = [max_length]
        run["data"]["max_length"] = max(max_length, 2 * plan.image_tokens)
    if name == "stage2":
        # No LoRA dropout: the seeded dropout masks of 28 LoRA layers took the tiny stage-2 step from
        # 0.30 s to 0.83 s and its graph compile from 17 s to 26 s (measured side by side, load 5, with the
        # int64 form of the mask hash; its uint32 form since halves the small preset's stage-2 step)
        run["pet_config"] = {"lora_rank": plan.lora_rank, "lora_alpha": plan.lora_alpha, "lora_dropout": 0.0}
        run["data"]["group_by_modality"] = False  # text-only samples ride in image batches: one graph
    if steps <= plan.eager_max_steps:
        run["context"] = {"mode": 1}
    if variant:
        # each seed draws its own router initialisation, routing noise and data order
        run["seed"] = seed
        run["data"]["seed"] = 42 + seed
        run["model"]["model_config"]["evf"] = {"enabled": True, "strategy": "gbpr" if variant == "moe" else variant}
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


def _data(folder: str, plan: DemoPlan, seed: int, log) -> dict:
    """The synthetic data set of this plan and seed; kept when `folder` already holds exactly that one."""
    arguments = dict(seed=seed, image_size=plan.image_size, num_caption=plan.caption_images,
                     num_instruct_images=plan.instruct_images, num_eval_images=plan.eval_images,
                     num_text_descriptions=400, num_text_scene_questions=400,
                     text_only_fraction=plan.text_only_fraction, max_objects=plan.max_objects)
    marker = os.path.join(folder, "generated_with.json")
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as fh:
            recorded = json.load(fh)
        if recorded["arguments"] == arguments:
            log(f"   data: kept {folder} (generated with the same arguments)")
            return recorded["paths"]
    paths = synthetic.generate(folder, **arguments)
    synthetic.write_json(marker, {"arguments": arguments, "paths": paths})
    return paths


def _longest(out_dir: str, paths: dict, plan: DemoPlan, stage0_reused: bool) -> dict:
    """`longest_samples`, kept in results/lengths.json while stage 0 (its tokenizer) is reused."""
    cache = os.path.join(out_dir, "results", "lengths.json")
    if stage0_reused and os.path.exists(cache):
        with open(cache, encoding="utf-8") as fh:
            return json.load(fh)
    lengths = longest_samples(paths, os.path.join(out_dir, "stage0"), plan.text_max_length)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    synthetic.write_json(cache, lengths)
    return lengths


def _finished_run(out_dir: str, name: str, config_path: str) -> dict | None:
    """What an earlier demo in `out_dir` recorded for this run, if it ran the same run yaml to the end."""
    path = os.path.join(out_dir, "results", f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        done = json.load(fh)
    with open(config_path, encoding="utf-8") as fh:
        return done if done.get("config") == fh.read() else None


def _record_run(out_dir: str, name: str, config_path: str, seconds: float, result: dict | None) -> None:
    """results/<name>.json: the run's yaml, time and measurements, so that a rerun in `out_dir` resumes."""
    with open(config_path, encoding="utf-8") as fh:
        record = {"config": fh.read(), "train_seconds": seconds}
    if result is not None:
        record["result"] = result
    os.makedirs(os.path.join(out_dir, "results"), exist_ok=True)
    synthetic.write_json(os.path.join(out_dir, "results", f"{name}.json"), record)


def evaluate_run(name: str, out_dir: str, paths: dict, evalset, log, vqa_length: int = 64) -> dict:
    """Every measurement of one stage's output."""
    from eve_ms.demo import evaluate

    directory = os.path.join(out_dir, name, "merged") if name == "stage2" else os.path.join(out_dir, name)
    model, config, tokenizer = evaluate.load_stage_model(directory)
    result = {}
    if name != "stage0":  # the text-only LLM has no adapter trained yet
        result["vqa"] = evaluate.vqa_accuracy(model, config, tokenizer, evalset.vqa, paths["image_folder"],
                                              vqa_length)
    if name != "stage1":  # stage 1 leaves the LLM as stage 0 made it
        if config.evf.enabled and config.evf.mode != "moe":
            model.set_evf_mode("language_only")
        result["language"] = evaluate.language_scores(model, tokenizer, evalset)
    parts = [f"VQA {result['vqa']['accuracy']:.3f}"] if "vqa" in result else []
    if "language" in result:
        parts.append(f"language accuracy {result['language']['accuracy']:.3f}")
    log(f"   {name}: " + ", ".join(parts))
    return result


def language_bit_identity(out_dir: str, evalset, stage3_runs: list) -> dict:
    """Language-only logits of each stage-3 EVF run vs the stage-2 (LoRA-merged) model, compared exactly."""
    import numpy as np

    from eve_ms.demo import evaluate

    dense, _, tokenizer = evaluate.load_stage_model(os.path.join(out_dir, "stage2", "merged"))
    texts = evalset.language_sentences + [q["context"] + q["options"][q["answer"]] for q in evalset.language_questions]
    dense_logits, _, mask = evaluate.language_logits(dense, tokenizer, texts)
    real = mask.astype(bool)
    identical, max_diff = True, 0.0
    for name in stage3_runs:
        evf, _, _ = evaluate.load_stage_model(os.path.join(out_dir, name), evf_mode="language_only")
        evf_logits, _, _ = evaluate.language_logits(evf, tokenizer, texts)
        identical &= bool(np.array_equal(dense_logits[real], evf_logits[real]))
        max_diff = max(max_diff, float(np.abs(dense_logits[real] - evf_logits[real]).max()))
    return {"runs": list(stage3_runs), "texts": len(texts), "tokens": int(real.sum()), "bit_identical": identical,
            "max_abs_diff": max_diff}


def _train_and_evaluate(name, config_path, out_dir, paths, evaluate, vqa_length, log):
    """Train one run, measure it if asked, record both in results/; -> (seconds, result or None)."""
    from eve_ms.demo import evaluate as measures

    seconds = train_run(name, config_path, log)
    result = None
    if evaluate:
        result = evaluate_run(name, out_dir, paths, measures.load_eval_set(paths), log, vqa_length)
    _record_run(out_dir, name, config_path, seconds, result)
    return seconds, result


def _stage3_job(work: tuple) -> tuple:
    """One stage-3 run in a worker process (`--jobs`): (name, seconds, result or None)."""
    name, config_path, out_dir, paths, evaluate, vqa_length = work
    seconds, result = _train_and_evaluate(name, config_path, out_dir, paths, evaluate, vqa_length,
                                          lambda text: print(text, flush=True))
    return name, seconds, result


@contextlib.contextmanager
def _sigterm_raises():
    """While inside: SIGTERM raises SystemExit in the main thread instead of killing the process outright.

    Python's default SIGTERM action ends the process without unwinding, so a Pool's workers (each
    training a stage-3 run) were left running as orphans; raised as an exception, it unwinds through
    `with Pool`, whose exit terminates and joins the workers."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_in_workers(function, work: list, jobs: int, on_result) -> None:
    """on_result(function(item)) for each item of `work`, in order, computed in `jobs` spawned worker processes.

    One task per worker process (a fresh MindSpore context each); SIGTERM or an error in the parent
    (on_result included) terminates the workers rather than orphaning them."""
    import multiprocessing

    with _sigterm_raises(), multiprocessing.get_context("spawn").Pool(jobs, maxtasksperchild=1) as pool:
        for result in pool.imap(function, work):
            on_result(result)


def run_demo(out_dir: str, quick: bool = False, seed: int = 0, log=print, jobs: int = 1) -> dict:
    """Run everything; returns the report (also written to out_dir).

    `seed` draws the data (and with it stages 0-2); stage-3 seeds are the plan's. `jobs` > 1 runs
    the stage-3 runs in that many worker processes (they only share stage 2's output). A run whose
    results/<name>.json records the same run yaml is not run again (a rerun resumes)."""
    from eve_ms.demo import evaluate, report

    plan = PLANS["quick" if quick else "full"]
    started = time.time()
    os.makedirs(out_dir, exist_ok=True)
    log(f"eve-ms demo ({'quick' if quick else 'full'}) -> {out_dir}")
    paths = _data(os.path.join(out_dir, "data"), plan, seed, log)
    evalset = evaluate.load_eval_set(paths)

    stage3 = [(variant, s) for s in plan.seeds for variant in plan.variants]
    names = ["stage0", "stage1", "stage2"] + [run_name(v, s) for v, s in stage3]
    timings, results = {}, {}
    lengths = {"text_train": plan.text_max_length}
    pending = []
    for name in names:
        tokenizer_dir = None if name == "stage0" else os.path.join(out_dir, "stage0", "tokenizer")
        config_path = write_run_yaml(name, out_dir, paths, plan, tokenizer_dir, lengths[run_spec(name)[2]])
        done = _finished_run(out_dir, name, config_path)
        if done is not None:
            log(f"\n== {name}: already done with this run yaml (results/{name}.json), not run again")
            timings[name] = done["train_seconds"]
            if "result" in done:
                results[name] = done["result"]
        elif run_spec(name)[3] is not None and jobs > 1:
            pending.append((name, config_path))  # stage-3 runs are independent of each other
        else:
            variant = run_spec(name)[3]
            wanted = variant is None or variant in plan.evaluated
            timings[name], result = _train_and_evaluate(name, config_path, out_dir, paths, wanted,
                                                        lengths.get("instruct_multimodal", 64) + 8, log)
            if result is not None:
                results[name] = result
        if name == "stage0":
            lengths = _longest(out_dir, paths, plan, done is not None)
            log(f"   longest samples (tokens): {lengths}")
    if pending:
        log(f"\n== {len(pending)} stage-3 runs in {jobs} worker processes")
        vqa_length = lengths["instruct_multimodal"] + 8
        work = [(name, path, out_dir, paths, run_spec(name)[3] in plan.evaluated, vqa_length)
                for name, path in pending]
        def finished(job):
            name, seconds, result = job
            timings[name] = seconds
            if result is not None:
                results[name] = result
                log(f"   {name}: VQA {result['vqa']['accuracy']:.3f}, "
                    f"language accuracy {result['language']['accuracy']:.3f}")

        run_in_workers(_stage3_job, work, jobs, finished)

    runs = {v: [run_name(v, s) for s in plan.seeds] for v in plan.variants}
    summary = {
        "mode": "quick" if quick else "full",
        "seed": seed,
        "plan": asdict(plan),
        "vqa_chance": synthetic.chance_accuracy(evalset.vqa),
        "sequence": report.sequence_proportions(out_dir, paths, lengths),
        "results": results,
        "variants": report.aggregate(results, runs),
        "routing": {v: report.routing_summary(out_dir, r) for v, r in runs.items()},
        "language_only_bit_identity": language_bit_identity(out_dir, evalset, runs["img_gbpr"]),
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
    parser.add_argument("--quick", action="store_true",
                        help="a smaller run (about 3 minutes): one stage-3 seed, Img-GBPR and a short Random run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--jobs", type=int, default=1,
                        help="stage-3 runs trained at once in worker processes (each uses the runtime's threads)")


def run(args) -> int:
    from eve_ms.demo.report import REQUIRED_CLAIMS

    if args.jobs < 1:
        raise SystemExit(f"eve-ms demo: --jobs must be >= 1, got {args.jobs}")
    summary = run_demo(args.out, quick=args.quick, seed=args.seed, jobs=args.jobs)
    failed = [name for name, claim in summary["claims"].items() if not claim["met"]]
    if failed:
        print(f"eve-ms demo: claims not met as measured (see report.md): {', '.join(failed)}", file=sys.stderr)
    return 1 if set(failed) & set(REQUIRED_CLAIMS) else 0
