"""The model behind `eve-ms eval`: `predict` answers questions, `ppl` and `loglik` score language texts.

Contract (eve_ms/eval/ask.py): `predict(items) -> list[str]`, an item being a dict with "id",
"prompt" (the user turn, without template or image placeholder), "image" (None, a file path or
a PIL image), "max_new_tokens" and optionally "chat" and "truncate"; `ppl(texts)` and
`loglik(contexts, continuations) -> list[float]` through the language-only path; `max_length`,
`num_tokens(text)` and `prompt_length(item)` let the runner fit prompts to the context.

predict: with "chat" (the default) the prompt becomes one human turn of the conversation
template (`template`, `v1` by default, with the image at its start when there is one); without
it the prompt is plain text after bos, as a base LM is asked (XSum). It is answered greedily,
stopping at eos; the answer is stripped of surrounding white space. With "truncate", a plain
prompt too long for the context and `max_new_tokens` keeps bos and its last tokens (OpenCompass's
HF models tokenize with `truncation_side='left'` and `max_length = max_seq_len - max_out_len`);
otherwise a prompt too long for `max_new_tokens` more tokens gets fewer new tokens (at least one)
rather than failing the run.

ppl: OpenCompass's perplexity score of each text (`inference.scoring.sequence_mean_losses`) over
bos and the text's tokens; a text longer than the context keeps bos and its last tokens (the same
left truncation).

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
from eve_ms.inference.scoring import TokenLogProbs, continuation_logliks, sequence_mean_losses
from eve_ms.training.config import COMPUTE_DTYPES


class EvePredictor:
    """`predict` / `ppl` / `loglik` over a loaded model and its tokenizer (see the module docstring)."""

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

    @property
    def max_length(self) -> int:
        return self.config.llm.max_position_embeddings

    def plain_ids(self, text: str) -> list[int]:
        """bos and the text's tokens: what a base LM is given (OpenCompass's `tokenizer(text)`)."""
        bos = self.tokenizer.bos_token_id
        return ([bos] if self.add_bos and bos is not None else []) + self._encode(text)

    def num_tokens(self, text: str) -> int:
        return len(self.plain_ids(text))

    def _keep_last(self, ids: list[int], limit: int) -> list[int]:
        """At most `limit` tokens: a leading bos and the last ones (a tokenizer's left truncation)."""
        if len(ids) <= limit:
            return list(ids)
        bos = self.tokenizer.bos_token_id
        head = [ids[0]] if self.add_bos and bos is not None and ids[0] == bos else []
        if limit <= len(head):
            raise ValueError(f"no room for any token of the text within {limit} tokens")
        return head + list(ids[len(ids) - (limit - len(head)):])

    # ------------------------------------------------------------------ generation

    def prompt_ids(self, prompt: str, has_image: bool):
        return chat_prompt_ids(self.tokenizer, self.config, [Turn("human", prompt, has_image)], self.template,
                               self.add_bos)

    def prompt_length(self, item: dict) -> int:
        """Tokens of the item's prompt before any truncation."""
        if item.get("chat", True):
            return len(self.prompt_ids(item["prompt"], item.get("image") is not None))
        return len(self.plain_ids(item["prompt"]))

    def _item_ids(self, item: dict, has_image: bool):
        if item.get("chat", True):
            return self.prompt_ids(item["prompt"], has_image)
        if has_image:
            raise ValueError(f"question {item.get('id')!r}: a plain-text prompt (chat=False) cannot carry an image")
        ids = self.plain_ids(item["prompt"])
        if item.get("truncate"):
            ids = self._keep_last(ids, self.max_length - int(item.get("max_new_tokens") or 64))
        return ids

    def predict(self, items: list[dict]) -> list[str]:
        answers = []
        for first in range(0, len(items), self.batch_size):
            batch = items[first:first + self.batch_size]
            prompts, pixels, limits = [], [], []
            for item in batch:
                image = load_pixels(self.processor, item.get("image"))
                ids = self._item_ids(item, image is not None)
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

    def _score_bucket(self) -> int:
        """The scoring batches' length bucket: the generator's in graph mode (a graph per shape), none in PyNative."""
        import mindspore as ms

        return self.generator.length_bucket if ms.get_context("mode") == ms.GRAPH_MODE else 1

    def _language_scorer(self):
        """(the mode's TokenLogProbs cell, the evf_mode context manager) of the language-only path."""
        mode = self.generator.evf_mode_for(has_image=False)
        if mode not in self._scorers:
            self._scorers[mode] = TokenLogProbs(self.model)  # one cell per mode: graph mode compiles the mode in
        return self._scorers[mode], self.generator.evf_mode(mode)

    def loglik(self, contexts: list[str], continuations: list[str]) -> list[float]:
        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
        pairs = [self.split_tokens(c, x) for c, x in zip(contexts, continuations)]
        cell, mode = self._language_scorer()
        with mode:
            return continuation_logliks(cell, pairs, self.max_length, self.batch_size, self.generator.pad_token_id,
                                        self._score_bucket())

    def ppl(self, texts: list[str]) -> list[float]:
        sequences = [self._keep_last(self.plain_ids(text), self.max_length) for text in texts]
        cell, mode = self._language_scorer()
        with mode:
            return sequence_mean_losses(cell, sequences, self.batch_size, self.generator.pad_token_id,
                                        self._score_bucket())


def build_predictor(checkpoint_dir: str, batch_size: int = 8, compute_dtype: str = "float32",
                    **kwargs) -> EvePredictor:
    """An `EvePredictor` for an eve-ms checkpoint directory (model.safetensors, model_config.yaml, tokenizer/).

    `compute_dtype` float16 / bfloat16 runs the model under MindSpore's O2 mixed precision (as the
    trainer does for that dtype; the EVF routers stay float32, see `evf.Router`), float32 as it is.
    """
    from eve_ms.checkpoint_dir import TOKENIZER_DIR, load_eve_checkpoint

    if compute_dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
    model, config, tokenizer = load_eve_checkpoint(checkpoint_dir)
    if tokenizer is None:
        raise ConfigError(f"{checkpoint_dir}: no {TOKENIZER_DIR}{os.sep} folder; evaluation needs the "
                          "checkpoint's tokenizer")
    if compute_dtype != "float32":
        import mindspore as ms

        ms.amp.auto_mixed_precision(model, "O2", dtype=getattr(ms, compute_dtype))  # casts the cells in place
    return EvePredictor(model, config, tokenizer, batch_size=batch_size, **kwargs)
