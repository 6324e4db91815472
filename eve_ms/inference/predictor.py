"""The model behind `eve-ms eval`: `predict` answers questions, `loglik` scores language continuations.

Contract (eve_ms/eval/runner.py): `predict(items) -> list[str]`, an item being a dict with
"id", "prompt" (the user turn, without template or image placeholder), "image" (None, a file
path or a PIL image) and "max_new_tokens"; `loglik(contexts, continuations) -> list[float]`,
the summed log-probability of each continuation given its context, plain text through the
language-only path.

predict: the prompt becomes one human turn of the `v1` template (with the image at its start
when there is one) and is answered greedily, stopping at eos; the answer is stripped of
surrounding white space. A prompt too long for `max_new_tokens` more tokens gets fewer new
tokens (at least one) rather than failing the run.

loglik: the context is tokenized with bos in front; the continuation's tokens are those that
the tokenization of context + continuation adds after the context's (the context's trailing
spaces are moved to the continuation first, as lm-evaluation-harness does).
"""
from __future__ import annotations

import os
import warnings

from eve_ms.config import ConfigError
from eve_ms.data.templates import Turn
from eve_ms.inference.generate import Generator
from eve_ms.inference.inputs import chat_prompt_ids, image_processor_for, load_pixels
from eve_ms.inference.sampling import GenerationConfig
from eve_ms.inference.scoring import TokenLogProbs, continuation_logliks


class EvePredictor:
    """`predict` / `loglik` over a loaded model and its tokenizer (see the module docstring)."""

    def __init__(self, model, config, tokenizer, *, batch_size: int = 8, template: str = "v1",
                 length_bucket: int = 16, image_aspect_ratio: str = "pad", add_bos: bool = True):
        if tokenizer is None:
            raise ConfigError("the predictor needs the checkpoint's tokenizer")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.config, self.tokenizer = model, config, tokenizer
        self.batch_size = batch_size
        self.template = template
        self.add_bos = add_bos
        self.generator = Generator(model, tokenizer, length_bucket=length_bucket)
        self.processor = image_processor_for(config, image_aspect_ratio)
        self._scorers: dict = {}

    # ------------------------------------------------------------------ generation

    def prompt_ids(self, prompt: str, has_image: bool):
        return chat_prompt_ids(self.tokenizer, self.config, [Turn("human", prompt, has_image)], self.template,
                               self.add_bos)

    def predict(self, items: list[dict]) -> list[str]:
        answers = []
        for first in range(0, len(items), self.batch_size):
            batch = items[first:first + self.batch_size]
            prompts, pixels, limits = [], [], []
            for item in batch:
                image = load_pixels(self.processor, item.get("image"))
                ids = self.prompt_ids(item["prompt"], image is not None)
                prompts.append(ids)
                pixels.append(image)
                limits.append(self._fit_limit(item, len(ids)))
            outputs = self.generator.generate(prompts, pixels, GenerationConfig(max_new_tokens=max(limits)),
                                              max_new_tokens=limits)
            answers += [output.text.strip() for output in outputs]
        return answers

    def _fit_limit(self, item: dict, prompt_length: int) -> int:
        wanted = int(item.get("max_new_tokens") or 64)
        room = self.config.llm.max_position_embeddings - prompt_length
        if room < 1:
            raise ValueError(f"question {item.get('id')!r}: its prompt of {prompt_length} tokens leaves no room "
                             f"within max_position_embeddings={self.config.llm.max_position_embeddings}")
        if room < wanted:
            warnings.warn(f"question {item.get('id')!r}: max_new_tokens {wanted} cut to {room} to fit the model")
        return min(wanted, room)

    # ------------------------------------------------------------------ scoring

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def split_tokens(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of context (bos first) and of continuation, as `loglik` scores them."""
        spaces = len(context) - len(context.rstrip(" "))
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        context_ids = self._encode(context)
        whole = self._encode(context + continuation)
        if whole[:len(context_ids)] == context_ids and len(whole) > len(context_ids):
            continuation_ids = whole[len(context_ids):]
        else:
            continuation_ids = self._encode(continuation)
        bos = self.tokenizer.bos_token_id
        if self.add_bos and bos is not None:
            context_ids = [bos] + context_ids
        return context_ids, continuation_ids

    def loglik(self, contexts: list[str], continuations: list[str]) -> list[float]:
        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
        pairs = [self.split_tokens(c, x) for c, x in zip(contexts, continuations)]
        mode = self.generator.evf_mode_for(has_image=False)
        if mode not in self._scorers:
            self._scorers[mode] = TokenLogProbs(self.model)  # one cell per mode: graph mode compiles the mode in
        with self.generator.evf_mode(mode):
            return continuation_logliks(self._scorers[mode], pairs, self.config.llm.max_position_embeddings,
                                        self.batch_size, self.generator.pad_token_id)


def build_predictor(checkpoint_dir: str, batch_size: int = 8, **kwargs) -> EvePredictor:
    """An `EvePredictor` for an eve-ms checkpoint directory (model.safetensors, model_config.yaml, tokenizer/)."""
    from eve_ms.checkpoint_dir import TOKENIZER_DIR, load_eve_checkpoint

    model, config, tokenizer = load_eve_checkpoint(checkpoint_dir)
    if tokenizer is None:
        raise ConfigError(f"{checkpoint_dir}: no {TOKENIZER_DIR}{os.sep} folder; evaluation needs the "
                          "checkpoint's tokenizer")
    return EvePredictor(model, config, tokenizer, batch_size=batch_size, **kwargs)
