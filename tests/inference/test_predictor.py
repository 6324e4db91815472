"""The evaluation predictor against direct model computations on the same weights."""
import os
import shutil

import numpy as np
import pytest
from mindspore import Tensor
from PIL import Image

from eve_ms.config import ConfigError
from eve_ms.data.templates import Turn
from eve_ms.inference.generate import Generator
from eve_ms.inference.inputs import chat_prompt_ids, image_processor_for
from eve_ms.inference.predictor import build_predictor
from eve_ms.inference.sampling import GenerationConfig


@pytest.fixture(scope="module")
def predictor(checkpoint_dir):
    return build_predictor(checkpoint_dir, batch_size=2)


def test_predict_answers_the_v1_prompt_greedily_with_and_without_images(predictor, evf_model, tokenizer,
                                                                        image_file):
    items = [
        {"id": "a", "prompt": "What is in the picture?", "image": image_file, "max_new_tokens": 3},
        {"id": "b", "prompt": "Hello, how are you today?", "image": None, "max_new_tokens": 2},
        {"id": "c", "prompt": "What is in the picture?", "image": Image.open(image_file), "max_new_tokens": 3},
    ]
    answers = predictor.predict(items)

    generator = Generator(evf_model, tokenizer)
    pixels = image_processor_for(evf_model.config).load(image_file)
    with_image = chat_prompt_ids(tokenizer, evf_model.config, [Turn("human", items[0]["prompt"], True)])
    text_only = chat_prompt_ids(tokenizer, evf_model.config, [Turn("human", items[1]["prompt"])])
    expected_image = generator.generate([with_image], [pixels], GenerationConfig(max_new_tokens=3))[0]
    expected_text = generator.generate([text_only], None, GenerationConfig(max_new_tokens=2))[0]
    assert answers == [expected_image.text.strip(), expected_text.text.strip(), expected_image.text.strip()]
    assert len(expected_image.token_ids) == 3 or expected_image.finish_reason == "eos"


def log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loglik_sums_continuation_log_probs_of_the_language_only_model(predictor, evf_model, tokenizer):
    contexts = ["The answer is", "How many birds are there on the fence? There are "]
    continuations = [" yes", "three birds"]
    values = predictor.loglik(contexts, continuations)

    evf_model.set_evf_mode("language_only")
    try:
        for context, continuation, value in zip(contexts, continuations, values):
            context_ids, continuation_ids = predictor.split_tokens(context, continuation)
            ids = np.asarray(context_ids + continuation_ids, np.int32)
            logits = evf_model.forward(Tensor(ids[None]))[0].asnumpy()[0]
            log_probs = log_softmax(logits)
            expected = sum(log_probs[t - 1, ids[t]] for t in range(len(context_ids), len(ids)))
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-4)
    finally:
        evf_model.set_evf_mode("multimodal")


def test_loglik_tokens_are_those_of_the_whole_text_after_the_context(predictor, tokenizer):
    context_ids, continuation_ids = predictor.split_tokens("There are ", "three birds")
    whole = tokenizer("There are three birds", add_special_tokens=False)["input_ids"]
    assert context_ids[0] == tokenizer.bos_token_id
    assert context_ids[1:] + continuation_ids == whole
    assert tokenizer.decode(continuation_ids) == " three birds"  # the context's trailing space moved over


def test_checkpoint_without_tokenizer_is_a_clear_error(checkpoint_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.safetensors", "model_config.yaml"):
        shutil.copy(os.path.join(checkpoint_dir, name), bare / name)
    with pytest.raises(ConfigError, match="tokenizer"):
        build_predictor(str(bare))


def _language_only_log_probs(model, ids):
    model.set_evf_mode("language_only")
    try:
        return log_softmax(model.forward(Tensor(np.asarray(ids, np.int32)[None]))[0].asnumpy()[0])
    finally:
        model.set_evf_mode("multimodal")


def _opencompass_ppl(model, ids):
    """OpenCompass's `_get_ppl` on one unpadded input: the n - 1 predicted tokens' loss summed, over n."""
    log_probs = _language_only_log_probs(model, ids)
    return -sum(log_probs[t - 1, ids[t]] for t in range(1, len(ids))) / len(ids)


def test_ppl_is_opencompass_s_mean_token_loss_of_the_whole_text(predictor, evf_model, tokenizer):
    texts = ["The answer is yes.", "How many birds are there? There are three birds sitting on the fence."]
    values = predictor.ppl(texts)
    for text, value in zip(texts, values):
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        assert predictor.num_tokens(text) == len(ids)
        np.testing.assert_allclose(value, _opencompass_ppl(evf_model, ids), rtol=1e-5)


def test_ppl_of_a_text_longer_than_the_context_keeps_bos_and_its_end(predictor, evf_model, tokenizer):
    text = " ".join(["The cat sleeps on the sofa near the window."] * 20)
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    limit = evf_model.config.llm.max_position_embeddings
    assert len(ids) > limit
    kept = [ids[0]] + ids[len(ids) - limit + 1:]  # a tokenizer's truncation_side='left', bos added after
    np.testing.assert_allclose(predictor.ppl([text])[0], _opencompass_ppl(evf_model, kept), rtol=1e-5)


def test_plain_prompts_are_bos_and_text_and_long_ones_keep_their_end(predictor, evf_model, tokenizer):
    short = "Hello, how are you today?"
    long = " ".join(["The answer is yes."] * 40)
    items = [{"id": "s", "prompt": short, "image": None, "max_new_tokens": 3, "chat": False},
             {"id": "l", "prompt": long, "image": None, "max_new_tokens": 3, "chat": False, "truncate": True}]
    answers = predictor.predict(items)
    generator = Generator(evf_model, tokenizer)
    bos = tokenizer.bos_token_id
    short_ids = [bos] + tokenizer(short, add_special_tokens=False)["input_ids"]
    long_ids = [bos] + tokenizer(long, add_special_tokens=False)["input_ids"]
    room = evf_model.config.llm.max_position_embeddings - 3
    assert predictor.prompt_length(items[1]) == len(long_ids) > room
    kept = [bos] + long_ids[len(long_ids) - room + 1:]
    expected = generator.generate([np.asarray(short_ids), np.asarray(kept)], None, GenerationConfig(max_new_tokens=3))
    assert answers == [output.text.strip() for output in expected]


def test_float16_compute_gives_the_float32_scores_to_half_precision(checkpoint_dir, predictor):
    import mindspore as ms

    from eve_ms.models.evf import EVFLayer

    half = build_predictor(checkpoint_dir, batch_size=2, compute_dtype="float16")
    layers = [cell for _, cell in half.model.cells_and_names() if isinstance(cell, EVFLayer)]
    hidden = half.config.llm.hidden_size
    assert layers and all(layer.router.weight.dtype == ms.float32
                          and layer.router.probabilities(Tensor(np.ones((2, hidden), np.float16))).dtype == ms.float32
                          for layer in layers)
    assert half.model.forward(Tensor(np.ones((1, 4), np.int32)))[0].dtype == ms.float16  # the rest runs in float16
    texts = ["The answer is yes.", "The answer is no."]
    np.testing.assert_allclose(half.ppl(texts), predictor.ppl(texts), rtol=2e-3)  # measured: 1.5e-4
    # a left-padded prompt: its padding queries may see nothing, and in float16 their scores must stay finite
    ids = half.prompt_ids("Is the cat on the sofa?", False)
    assert len(ids) % half.generator.length_bucket  # padded on the left to the bucket
    config = GenerationConfig(max_new_tokens=3)
    halves, fulls = (p.generator.generate([ids], None, config, keep_logits=True)[0] for p in (half, predictor))
    assert np.isfinite(halves.logits).all()
    np.testing.assert_allclose(halves.logits, fulls.logits, atol=2e-2)  # measured: 8.5e-3
    assert half.generator._cells.dtype == ms.float16  # the cache is kept in the compute dtype (graph mode needs it)
    with pytest.raises(ConfigError, match="compute_dtype must be one of"):
        build_predictor(checkpoint_dir, compute_dtype="int8")


def test_graph_mode_gives_pynative_s_answers_and_scores(checkpoint_dir, predictor, image_file):
    """`eve-ms eval` on CPU runs in graph mode with length buckets (eval/run.py): the answers and scores it
    gives are those of PyNative without buckets, on image and text-only prompts and on padded score batches."""
    import mindspore as ms

    items = [{"id": "a", "prompt": "What is in the picture?", "image": image_file, "max_new_tokens": 3},
             {"id": "b", "prompt": "Is the cat on the sofa?", "image": None, "max_new_tokens": 3}]
    texts = ["The answer is yes.", "The answer is no.", "There are three birds on the fence."]
    pairs = (["The answer is", "There are"], [" yes", " three birds"])
    eager = (predictor.predict(items), predictor.ppl(texts), predictor.loglik(*pairs))
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        graph = build_predictor(checkpoint_dir, batch_size=2, length_bucket=64)
        compiled = (graph.predict(items), graph.ppl(texts), graph.loglik(*pairs))
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert compiled[0] == eager[0]
    np.testing.assert_allclose(compiled[1], eager[1], rtol=1e-6)
    np.testing.assert_allclose(compiled[2], eager[2], rtol=1e-6)


def test_eval_cli_scores_choice_and_xsum_on_a_checkpoint(checkpoint_dir, evf_model, tokenizer, tmp_path, capsys):
    """`eve-ms eval` end to end: BoolQ by ppl (checked against the model's own losses) and XSum with an
    article longer than the context (truncated, counted, not an error)."""
    import json

    from eve_ms import cli

    boolq = tmp_path / "val.jsonl"
    records = [{"question": "is the sun a star", "passage": "The answer is yes.", "idx": 0, "label": True},
               {"question": "are there three birds", "passage": "There are three birds.", "idx": 1, "label": False}]
    boolq.write_text("".join(json.dumps(r) + "\n" for r in records))
    common = ["--checkpoint", checkpoint_dir, "--output", str(tmp_path / "out"), "--no-progress",
              "--device-target", "CPU", "--num-threads", "2", "--compute-dtype", "float32", "--batch-size", "2",
              "--exec-mode", "pynative"]  # graph mode (the CPU default) is tested against PyNative above
    assert cli.main(["eval", "--benchmark", "boolq", "--data", str(boolq), *common]) == 0
    bos = tokenizer.bos_token_id
    correct = 0
    for record in records:
        losses = [_opencompass_ppl(evf_model, [bos] + tokenizer(
            f"{record['passage']}\nQuestion: {record['question']}?\n{answer}", add_special_tokens=False)["input_ids"])
            for answer in ("No", "Yes")]
        correct += int(np.argmin(losses)) == int(record["label"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["score"] == pytest.approx(100.0 * correct / len(records))

    xsum = tmp_path / "dev.jsonl"
    articles = [("short", "The cat sleeps on the sofa."), ("long", " ".join(["The cat sleeps on the sofa."] * 40))]
    xsum.write_text("".join(json.dumps({"id": i, "dialogue": a, "summary": "A cat sleeps."}) + "\n"
                            for i, a in articles))
    assert cli.main(["eval", "--benchmark", "xsum", "--data", str(xsum), "--max-new-tokens", "4", *common]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["questions"] == 2 and printed["truncated"] == 1


def test_graph_mode_float16_generation_equals_pynative_float16(checkpoint_dir, image_file):
    """Graph mode under float16 mixed precision generates what PyNative float16 does, on an image and a text-only
    prompt: the KV cache is kept in the compute dtype (read through a cast, graph mode wrote new keys into a
    copy and decoding diverged after the prefill) and the patch embedding casts its weight to the pixels' dtype
    (image prompts failed to compile)."""
    import mindspore as ms

    config = GenerationConfig(max_new_tokens=3)
    half = build_predictor(checkpoint_dir, batch_size=2, compute_dtype="float16")
    pixels = image_processor_for(half.config).load(image_file)
    prompts = [(half.prompt_ids("What is in the picture?", True), [pixels]),
               (half.prompt_ids("Is the cat on the sofa?", False), None)]
    eager = [half.generator.generate([ids], images, config, keep_logits=True)[0] for ids, images in prompts]
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        graph = build_predictor(checkpoint_dir, batch_size=2, compute_dtype="float16", length_bucket=64)
        compiled = [graph.generator.generate([ids], images, config, keep_logits=True)[0] for ids, images in prompts]
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    for e, g in zip(eager, compiled):
        np.testing.assert_array_equal(g.token_ids, e.token_ids)
        assert np.isfinite(g.logits).all()
        np.testing.assert_allclose(g.logits, e.logits, atol=2e-2)
