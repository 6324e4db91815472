"""Text generation with Eve: a static-shape KV cache, batched left-padded prompts, greedy or sampled.

    generator = Generator(model, tokenizer)
    outputs = generator.generate([ids_a, ids_b], [pixels_a, None], GenerationConfig(max_new_tokens=32))

A prompt is token ids in which an image occupies `config.num_image_tokens` copies of
IMAGE_TOKEN_INDEX (as `eve_ms.data.encode_prompt` builds them), with its pixels [3, S, S];
a text-only prompt has no image tokens and no pixels.

Two compiled steps do the work, each a cell of its own so graph mode compiles them (one graph
per input shape; PyNative runs the same cells eagerly), both over a `KVCache` of the batch's
shape (eve_ms/models/kv_cache.py: per-layer Parameters written in place, kept for reuse by shape):
- prefill: the left-padded prompts through `embed_inputs` (image tokens spliced, modality
  mask) into an emptied cache of M = prompt + max_new_tokens slots;
- decode: one text token per sample (is_image False) at cache slot `cache_position`.
Each returns the greedy next tokens (argmax in the graph) and the last position's logits.
Greedy decoding reads back only the tokens; sampling chooses on the host from the logits
(`sampling.next_tokens`), so seeds reproduce everywhere. Stop strings are checked on the
decoded text (`streaming.ReplyText`), which also yields the pieces a `stream(index, text)`
callback receives.

EVF routing: a batch is split into its image prompts and its text-only prompts, generated
separately. Text-only prompts run the EVF layers in language_only mode (language FFN on every
token, no router: exactly the stage-2 LLM) unless the model was built in `moe` mode, which has
no language-only path; `language_only=True` forces it for every prompt, False disables the
automatic switch. Graph mode does not recompile when a layer's mode attribute changes, so each
(step, mode) pair gets its own cell, and the mode is set before every call. Routing noise (used
by the random strategy and img_gbpr's redistribution) comes from a numpy generator seeded with
`routing_seed`: a generation is deterministic. In multimodal mode all token slots of a call
compete for the experts' capacity, padding slots counted in T (DESIGN section 3): batching and
`length_bucket` can change which tokens are dropped when capacity is short; they change nothing
in language_only mode or in a dense model.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Optional, Sequence

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from eve_ms.config import IMAGE_TOKEN_INDEX
from eve_ms.inference.sampling import GenerationConfig, next_tokens
from eve_ms.inference.streaming import ReplyText
from eve_ms.models.kv_cache import CacheCells, KVCache, greedy_token

FINISH_REASONS = ("eos", "stop_string", "length", "cancelled")


class PrefillStep(nn.Cell):
    """Prompts [B, S] (+ pixels) into the emptied cache -> (greedy tokens [B] int32, last logits [B, V] float32)."""

    def __init__(self, model, cache: KVCache):
        super().__init__(auto_prefix=False)  # keep the model's parameter names
        self.model = model
        self.cache = cache
        self.has_evf = model.llm.num_evf_layers > 0

    def construct(self, input_ids, attention_mask, routing_noise, pixel_values=None):
        embeds, is_image = self.model.embed_inputs(input_ids, pixel_values)
        noise = routing_noise if self.has_evf else None
        logits, _, _ = self.model.llm.forward_step(
            embeds, attention_mask, ops.zeros((), ms.int32), self.cache.keys, self.cache.values, is_image, noise,
            last_only=True
        )
        last = logits[:, -1].astype(ms.float32)
        return greedy_token(last), last


class DecodeStep(nn.Cell):
    """One text token per sample [B, 1] at `cache_position` -> (greedy tokens [B] int32, logits [B, V] float32)."""

    def __init__(self, model, cache: KVCache):
        super().__init__(auto_prefix=False)
        self.model = model
        self.cache = cache
        self.has_evf = model.llm.num_evf_layers > 0

    def construct(self, token_ids, attention_mask, cache_position, routing_noise):
        noise = routing_noise if self.has_evf else None
        logits, _, _ = self.model.llm.forward_step(
            self.model.llm.embed(token_ids), attention_mask, cache_position, self.cache.keys, self.cache.values,
            None, noise
        )
        last = logits[:, -1].astype(ms.float32)
        return greedy_token(last), last


@dataclass
class GenerationOutput:
    token_ids: np.ndarray  # the new tokens, int32; the eos token is not included
    text: Optional[str]  # decoded reply (ends before a stop string); None without a tokenizer
    finish_reason: str  # eos | stop_string | length | cancelled
    evf_mode: Optional[str]  # the EVF mode this sample ran in; None for a model without EVF layers
    logits: Optional[np.ndarray] = None  # [steps, V] float32: what each token was chosen from (keep_logits)


def cache_dtype(llm):
    """The dtype of the KV cache: the one the attention computes keys in.

    Under mixed precision (a float16 / bfloat16 cell, `ms.amp.auto_mixed_precision`) the weights stay
    float32 but graph mode reads a float32 cache Parameter through a cast to the compute dtype, and the
    in-place write of a step's keys then goes to that copy, not the cache: decode steps saw an empty
    cache (graph-mode float16 generation diverged from PyNative's after the prefill). A cache of the
    compute dtype is read and written as it is."""
    kind = str(llm.model.layers[0].self_attn.get_mixed_precision_type())
    if kind.endswith("FP16"):
        return ms.float16
    if kind.endswith("BF16"):
        return ms.bfloat16
    return llm.model.embed_tokens.weight.dtype


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class Generator:
    """Generates replies from an `EveForCausalLM` (see the module docstring).

    tokenizer: decodes replies (text, stop strings, streaming) and gives eos/pad ids; without
    one, ids come from the model config and outputs carry token ids only.
    length_bucket: prompt lengths and cache lengths are rounded up to a multiple of it (left
    padding), so graph mode compiles fewer shapes.
    """

    def __init__(self, model, tokenizer=None, *, length_bucket: int = 1, routing_seed: int = 0):
        if length_bucket < 1:
            raise ValueError(f"length_bucket must be at least 1, got {length_bucket}")
        self.model = model
        self.config = model.config
        self.tokenizer = tokenizer
        self.length_bucket = length_bucket
        self.routing_seed = routing_seed
        llm = model.llm
        self.evf_layers = [llm.model.layers[i].mlp for i in llm.model.evf_layer_indices]
        self.model_mode = self.evf_layers[0].mode if self.evf_layers else None
        self.eos_token_id = self.config.llm.eos_token_id
        self.pad_token_id = self.config.llm.pad_token_id
        if tokenizer is not None:
            from eve_ms.data.tokenizer import special_ids

            ids = special_ids(tokenizer)
            self.eos_token_id, self.pad_token_id = ids.eos, ids.pad
        self._cells = CacheCells(model.config.llm, cache_dtype(model.llm), self._make_cell)
        model.set_train(False)

    # ------------------------------------------------------------------ modes

    def evf_mode_for(self, has_image: bool, language_only: Optional[bool] = None) -> Optional[str]:
        """The EVF mode a prompt runs in (None: the model has no EVF layers)."""
        if self.model_mode is None:
            return None
        if language_only:
            return "language_only"
        if not has_image and language_only is None and self.model_mode == "multimodal":
            return "language_only"
        return self.model_mode

    @contextlib.contextmanager
    def evf_mode(self, mode: Optional[str]):
        """Run the EVF layers in `mode` inside the block; the model's own mode afterwards."""
        for layer in self.evf_layers:
            layer.set_mode(mode)
        try:
            yield
        finally:
            for layer in self.evf_layers:
                layer.set_mode(self.model_mode)

    def _make_cell(self, cache: KVCache, key: tuple):
        kind = key[0]  # (kind, mode, with_image): each EVF mode gets cells of its own (graph mode compiles it in)
        return PrefillStep(self.model, cache) if kind == "prefill" else DecodeStep(self.model, cache)

    def _cell(self, kind: str, mode: Optional[str], batch: int, slots: int, with_image: bool = False):
        """(step cell, its KVCache) for this batch shape."""
        return self._cells.get(batch, slots, (kind, mode, with_image))

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        input_ids: Sequence,
        pixel_values: Optional[Sequence] = None,
        config: Optional[GenerationConfig] = None,
        *,
        max_new_tokens: Optional[Sequence[int]] = None,
        language_only: Optional[bool] = None,
        stream: Optional[Callable[[int, str], None]] = None,
        keep_logits: bool = False,
        configs: Optional[Sequence[GenerationConfig]] = None,
        cancelled: Optional[Callable[[int], bool]] = None,
        timings: Optional[list] = None,
    ) -> list[GenerationOutput]:
        """One `GenerationOutput` per prompt, in order.

        input_ids: 1-D int arrays; pixel_values: per prompt an array [3, S, S] or None (default:
        all None); max_new_tokens: optional per-prompt limits (default config.max_new_tokens);
        stream(index, text): called with each new piece of a reply's text (needs a tokenizer);
        keep_logits: also return the logits of every step (`GenerationOutput.logits`).
        configs: instead of `config`, one GenerationConfig per prompt (its limit, stop strings,
        eos and sampling), each prompt sampled from a generator seeded by its own config, so a
        prompt's tokens are those it gets alone (what a server batching its clients needs);
        with `config` the batch shares one generator seeded by config.seed.
        cancelled(index): polled before every step; a prompt for which it answers True stops
        there (finish reason "cancelled") and the generation ends once no prompt is left.
        timings: when given, gets the seconds of every step call (prefill first), its read-back included.
        """
        prompts = [np.asarray(ids, dtype=np.int64).reshape(-1) for ids in input_ids]
        if configs is not None:
            if config is not None:
                raise ValueError("give config or configs, not both")
            row_configs = list(configs)
            if len(row_configs) != len(prompts):
                raise ValueError(f"{len(prompts)} prompts but {len(row_configs)} configs")
            sample_rngs = [np.random.default_rng(c.seed) for c in row_configs]
        else:
            config = config or GenerationConfig()
            row_configs = [config] * len(prompts)
            sample_rngs = [np.random.default_rng(config.seed)]  # one generator for the whole batch
        pixels = list(pixel_values) if pixel_values is not None else [None] * len(prompts)
        limits = (list(max_new_tokens) if max_new_tokens is not None
                  else [c.max_new_tokens for c in row_configs])
        if len(pixels) != len(prompts) or len(limits) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(pixels)} pixel entries and {len(limits)} limits")
        if (any(c.stop_strings for c in row_configs) or stream is not None) and self.tokenizer is None:
            raise ValueError("stop strings and streaming need a tokenizer to decode the replies")
        for index, (ids, image, limit) in enumerate(zip(prompts, pixels, limits)):
            self._check_prompt(index, ids, image, limit)

        outputs: list = [None] * len(prompts)
        noise_rng = np.random.default_rng(self.routing_seed)
        for with_image in (True, False):
            group = [i for i, image in enumerate(pixels) if (image is not None) == with_image]
            if not group:
                continue
            mode = self.evf_mode_for(with_image, language_only)
            for part in self._fitting_parts(group, prompts, limits):
                rngs = sample_rngs if configs is None else [sample_rngs[i] for i in part]
                results = self._generate_group(
                    [prompts[i] for i in part], [pixels[i] for i in part] if with_image else None,
                    [limits[i] for i in part], mode, [row_configs[i] for i in part], rngs, noise_rng,
                    (lambda row, text, _part=part: stream(_part[row], text)) if stream else None, keep_logits,
                    (lambda row, _part=part: cancelled(_part[row])) if cancelled else None, timings,
                )
                for i, result in zip(part, results):
                    outputs[i] = result
        return outputs

    def _fitting_parts(self, group: list, prompts: list, limits: list) -> list:
        """The group as one batch, or one prompt at a time when the longest prompt plus the
        largest limit would not fit the cache (each prompt alone does, `_check_prompt`)."""
        longest = max(len(prompts[i]) for i in group) + max(limits[i] for i in group)
        if longest <= self.config.llm.max_position_embeddings:
            return [group]
        return [[i] for i in group]

    def _check_prompt(self, index: int, ids: np.ndarray, image, limit: int) -> None:
        if ids.size == 0:
            raise ValueError(f"prompt {index} is empty")
        if limit < 1:
            raise ValueError(f"prompt {index}: max_new_tokens must be at least 1, got {limit}")
        image_tokens = int((ids == IMAGE_TOKEN_INDEX).sum())
        vocab = self.config.llm.vocab_size
        text = ids[ids != IMAGE_TOKEN_INDEX]
        if text.size and (text.min() < 0 or text.max() >= vocab):
            raise ValueError(f"prompt {index} has token ids outside 0..{vocab - 1}")
        if image is None and image_tokens:
            raise ValueError(f"prompt {index} has {image_tokens} image tokens but no image")
        if image is not None:
            expected = self.config.num_image_tokens
            if image_tokens != expected:
                raise ValueError(f"prompt {index} has {image_tokens} image tokens, an image takes {expected}")
            size = self.config.vision.image_size
            if tuple(np.shape(image)) != (3, size, size):
                raise ValueError(f"prompt {index}: pixels must be [3, {size}, {size}], got {list(np.shape(image))}")
        total = len(ids) + limit
        longest = self.config.llm.max_position_embeddings
        if total > longest:
            raise ValueError(
                f"prompt {index}: {len(ids)} prompt tokens + {limit} new tokens exceed "
                f"max_position_embeddings={longest}"
            )

    def _routing_noise(self, rng: np.random.Generator, batch: int, length: int) -> Tensor:
        layers = max(1, len(self.evf_layers))  # a dense model's steps ignore it
        return Tensor(rng.random((layers, batch, length), dtype=np.float32))

    def _next_tokens(self, logits: np.ndarray, configs: list, rngs: list, active: np.ndarray) -> np.ndarray:
        """Each row's next token: from the one shared generator (len(rngs) == 1, every row drawn), or from
        each active row's own generator and config (the draws of a row do not depend on the others)."""
        if len(rngs) == 1 and len(configs) > 1:
            return next_tokens(logits, configs[0], rngs[0])
        tokens = np.full(len(logits), self.pad_token_id, np.int32)
        for row in np.flatnonzero(active):
            tokens[row] = next_tokens(logits[row:row + 1], configs[row], rngs[row])[0]
        return tokens

    def _generate_group(self, prompts, pixels, limits, mode, configs, rngs, noise_rng, stream, keep_logits,
                        cancelled=None, timings=None):
        batch = len(prompts)
        steps = max(limits)
        longest = self.config.llm.max_position_embeddings
        length = max(len(p) for p in prompts)
        if _round_up(length, self.length_bucket) + steps <= longest:
            length = _round_up(length, self.length_bucket)
        slots = min(_round_up(length + steps, self.length_bucket), longest)
        ids = np.full((batch, length), self.pad_token_id, np.int32)
        mask = np.zeros((batch, slots), np.int32)
        for row, prompt in enumerate(prompts):
            ids[row, length - len(prompt):] = prompt
            mask[row, length - len(prompt):length] = 1
        eos = [c.eos_token_id if c.eos_token_id is not None else self.eos_token_id for c in configs]
        replies = [ReplyText(self.tokenizer, c.stop_strings) if self.tokenizer else None for c in configs]
        generated = [[] for _ in prompts]
        seen = [[] for _ in prompts]  # logits of each sample's steps, when kept
        reasons: list = [None] * batch

        all_greedy = all(c.greedy for c in configs)  # then the graph's argmax is every row's token
        read_logits = keep_logits or not all_greedy

        def call(cell, *args):
            """(greedy tokens or None, logits or None) on the host: B ids a step when greedy."""
            start = time.perf_counter()
            greedy, logits = cell(*args)
            read = (greedy.asnumpy() if all_greedy else None, logits.asnumpy() if read_logits else None)
            if timings is not None:
                timings.append(time.perf_counter() - start)
            return read

        with self.evf_mode(mode):
            prefill, cache = self._cell("prefill", mode, batch, slots, pixels is not None)
            decode, _ = self._cell("decode", mode, batch, slots)
            cache.reset()
            args = [Tensor(ids), Tensor(mask), self._routing_noise(noise_rng, batch, length)]
            if pixels is not None:
                args.append(Tensor(np.stack(pixels).astype(np.float32)))
            greedy, step_logits = call(prefill, *args)
            for step in range(steps):
                if cancelled is not None:
                    for row in range(batch):
                        if reasons[row] is None and cancelled(row):
                            reasons[row] = "cancelled"
                    if all(reasons):
                        break
                tokens = (greedy if all_greedy
                          else self._next_tokens(step_logits, configs, rngs, np.array([r is None for r in reasons])))
                for row in range(batch):
                    if reasons[row] is None:
                        if keep_logits:
                            seen[row].append(step_logits[row])
                        reasons[row] = self._accept(row, int(tokens[row]), eos[row], generated, replies, stream)
                        if reasons[row] is None and step + 1 >= limits[row]:
                            reasons[row] = "length"
                active = np.array([r is None for r in reasons])
                if not active.any():
                    break
                mask[active, length + step] = 1
                step_tokens = np.where(active, tokens, self.pad_token_id).astype(np.int32)
                greedy, step_logits = call(
                    decode, Tensor(step_tokens[:, None]), Tensor(mask), Tensor(length + step, ms.int32),
                    self._routing_noise(noise_rng, batch, 1),
                )

        outputs = []
        for row in range(batch):
            text = None
            if replies[row] is not None:
                rest = replies[row].finish()
                if rest and stream:
                    stream(row, rest)
                text = replies[row].text
            kept = np.stack(seen[row]) if keep_logits else None
            outputs.append(GenerationOutput(np.asarray(generated[row], np.int32), text, reasons[row] or "length",
                                            mode, kept))
        return outputs

    def _accept(self, row, token, eos, generated, replies, stream) -> Optional[str]:
        """Record one sample's new token; returns its finish reason, or None while it goes on."""
        if eos is not None and token == eos:
            return "eos"
        generated[row].append(token)
        reply = replies[row]
        if reply is None:
            return None
        piece = reply.update(generated[row])
        if piece and stream:
            stream(row, piece)
        return "stop_string" if reply.stopped else None


class LanguageModel(nn.Cell):
    """An `LLM` alone as `Generator` takes a model: text prompts only (no vision tower, no image tokens)."""

    def __init__(self, llm):
        super().__init__(auto_prefix=False)  # keep the LLM's own parameter names
        self.llm = llm
        self.config = SimpleNamespace(llm=llm.config)

    def embed_inputs(self, input_ids, pixel_values=None):
        return self.llm.embed(input_ids), None


def greedy_generate(step, input_ids, attention_mask, max_new_tokens: int, eos_token_id: Optional[int] = None,
                    pad_token_id: int = 0, timings: Optional[list] = None) -> np.ndarray:
    """Greedy decoding of an LLM with the static KV cache: the new tokens [B, max_new_tokens] (numpy).

    step: an `LLMDecodeStep` or the `LLM` itself. input_ids, attention_mask [B, S] (numpy or
    tensors), prompts of different lengths left-padded. A sample that emits `eos_token_id` keeps
    it and gets `pad_token_id` after it. It is `Generator`'s loop (the one `eve-ms chat`, `eve-ms
    eval` and the server run) over the LLM as a `LanguageModel`; the generator, with its caches and
    compiled cells by shape, is kept on `step` for its next call. `timings`, when given, gets the
    seconds of each call (prefill first), token read-back included.
    """
    llm = getattr(step, "llm", step)
    ids = np.asarray(input_ids.asnumpy() if isinstance(input_ids, Tensor) else input_ids).astype(np.int64)
    mask = np.asarray(attention_mask.asnumpy() if isinstance(attention_mask, Tensor) else attention_mask)
    generator = step.__dict__.get("_generator")
    if generator is None:
        generator = Generator(LanguageModel(llm))
        step.__dict__["_generator"] = generator
    generator.eos_token_id = eos_token_id  # None: no sample stops early
    prompts = [row[keep.astype(bool)] for row, keep in zip(ids, mask)]
    # language_only=False: an EVF LLM runs in the mode it was set to, text prompts or not
    outputs = generator.generate(prompts, None, GenerationConfig(max_new_tokens=max_new_tokens), language_only=False,
                                 timings=timings)
    out = np.full((len(prompts), max_new_tokens), pad_token_id, np.int32)
    for row, output in enumerate(outputs):
        tokens = list(output.token_ids) + ([eos_token_id] if output.finish_reason == "eos" else [])
        out[row, :len(tokens)] = tokens
    return out
