"""`eve-ms eval` answers do not depend on `--batch-size` with the default EVF settings.

The model is the tiny EVF model of these tests (order-one weights) with the default `evf` section:
img_gbpr, capacity factor 1.5 while training, evaluation capacity factor 2.0, min capacity 4. The
questions are GQA's format, some asked with their image and some text-only, mixed in every batch,
run through the evaluation runner (`eve_ms.eval.runner.evaluate`, what `eve-ms eval` calls) with
the checkpoint's predictor at batch sizes 1, 8 and 16. Besides the answers, each question's
log-likelihood of its greedy answer is recorded from the generator's logits. They agree to float32
rounding only (about 1e-6: MindSpore's CPU kernels round a row by the shape of the call; a dense
model shows the same), so they are compared with a tolerance far below what a dropped or re-routed
token does (0.35 and more, shown with the evaluation capacity set to the training one).
"""
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from tiny_eve import build_model
from eve_ms.config import EVFConfig
from eve_ms.eval import registry
from eve_ms.eval.runner import evaluate, read_answers

NUM_QUESTIONS = 10
TEXT_ONLY = {2, 5, 8}  # asked without their image
QUESTIONS = ["What is in the picture?", "How many birds are there?", "Describe the image in one sentence.",
             "Is the cat on the sofa?", "What colour is the apple?"]


@pytest.fixture(scope="module")
def mixed_gqa(tmp_path_factory):
    """GQA's questions file and image folder; the benchmark as GQA with some questions text-only and short answers."""
    root = tmp_path_factory.mktemp("gqa_mixed")
    rng = np.random.default_rng(0)
    records = {}
    for i in range(NUM_QUESTIONS):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(root / f"img{i}.jpg")
        records[f"q{i}"] = {"imageId": f"img{i}", "question": QUESTIONS[i % len(QUESTIONS)] + " " * (i % 3),
                            "answer": "yes"}
    (root / "questions.json").write_text(json.dumps(records))
    gqa = registry.get_benchmark("gqa")

    def load(data_path, image_folder):
        return [q if int(q.id[1:]) not in TEXT_ONLY else dataclasses.replace(q, image=None)
                for q in gqa.load(data_path, image_folder)]

    return str(root / "questions.json"), str(root), dataclasses.replace(gqa, name="gqa_mixed", load=load,
                                                                        max_new_tokens=2)


def _checkpoint(tmp_path_factory, tokenizer, **evf):
    from eve_ms.checkpoint_dir import save_eve_checkpoint

    model = build_model(len(tokenizer), strategy="img_gbpr", capacity_factor=1.5, min_capacity=4, **evf)
    directory = str(tmp_path_factory.mktemp("checkpoint"))
    save_eve_checkpoint(model, model.config, directory, tokenizer=tokenizer)
    return directory, model.config


def _evaluate(checkpoint, benchmark, batch_size, tmp_path_factory, monkeypatch):
    """eve-ms eval's runner on the mixed benchmark: (answers by id, log-likelihood of each greedy answer by id)."""
    from eve_ms.inference.predictor import build_predictor

    data, images, bench = benchmark
    monkeypatch.setitem(registry.BENCHMARKS, bench.name, bench)
    predictor = build_predictor(checkpoint, batch_size=batch_size)
    generate, outputs = predictor.generator.generate, []

    def recording(*args, **kwargs):
        outputs.extend(generate(*args, **dict(kwargs, keep_logits=True)))
        return outputs[-len(args[0]):]

    predictor.generator.generate = recording
    # a fresh answers file each run: nothing to resume
    answers_file = str(tmp_path_factory.mktemp("answers") / f"{bench.name}_answers.jsonl")
    evaluate(bench.name, data, images, predictor, answers_file, batch_size=batch_size, progress=False)
    answers = read_answers(answers_file, "generate")
    logliks = []
    for output in outputs:  # in the order the questions were asked, which is the answers file's order
        logits = output.logits.astype(np.float64)
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        logliks.append(sum(log_probs[step, token] for step, token in enumerate(output.token_ids)))
    assert [o.evf_mode for o in outputs].count("multimodal") == NUM_QUESTIONS - len(TEXT_ONLY)
    return answers, dict(zip(answers, logliks))


def test_answers_and_their_log_likelihoods_do_not_depend_on_the_batch_size(tmp_path_factory, tokenizer, mixed_gqa,
                                                                           monkeypatch):
    checkpoint, config = _checkpoint(tmp_path_factory, tokenizer)
    assert config.evf == EVFConfig(enabled=True)  # the default settings, training capacity factor 1.5 included
    runs = {size: _evaluate(checkpoint, mixed_gqa, size, tmp_path_factory, monkeypatch) for size in (1, 8, 16)}
    answers, logliks = runs[1]
    assert len(answers) == NUM_QUESTIONS
    for size in (8, 16):
        assert runs[size][0] == answers, size
        for qid, value in logliks.items():
            assert runs[size][1][qid] == pytest.approx(value, abs=1e-5), (size, qid)

    # the same model evaluated with the training capacity, as eve-ms did before evaluation had its own factor:
    # its answers change with the batch size
    dropping, _ = _checkpoint(tmp_path_factory, tokenizer, eval_capacity_factor=1.5)
    alone, batched = (_evaluate(dropping, mixed_gqa, size, tmp_path_factory, monkeypatch) for size in (1, 16))
    worst = max(abs(alone[1][qid] - batched[1][qid]) for qid in alone[1])
    assert worst > 1e-2 or alone[0] != batched[0]
