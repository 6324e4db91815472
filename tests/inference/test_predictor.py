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
