"""The Llama-style causal language model of Eve, in MindSpore.

Reads top to bottom in the order data meets it: RMSNorm, rotary tables, attention (grouped-query,
optional q/k/v/o bias, static-shape KV cache), the attention-output shortcut, decoder layer (a
SwiGLU or series FFN, or an EVF layer; the shortcut where the config puts it), the decoder stack,
and the causal LM with its loss and greedy decoding. What each layer is comes from `LLMConfig`
(`ffn_kind(i)`, `attn_shortcut_width_of(i)`) when the layer is built.

Parameter names are Hugging Face Llama's, one to one (`model.embed_tokens.weight`,
`model.layers.{i}.self_attn.q_proj.weight`, ..., `model.norm.weight`, `lm_head.weight`), plus
the Eve release's PanGu-pi names (`mlp.gate_proj2`; its `attn_linear.0` / `attn_linear.2` are
`attn_linear.in_proj` / `attn_linear.out_proj` here), so the converter in
`eve_ms/convert/hf_llm.py` is a table of names. Every linear layer is `nn.Dense`, the type
MindFormers' LoRA replaces.

Entry points (B batch, S tokens, H hidden, V vocabulary, M cache slots):

- `llm(input_ids, attention_mask=None, position_ids=None) -> logits [B, S, V]`
- `llm.embed(input_ids) -> [B, S, H]`
- `llm.forward_embeds(inputs_embeds, attention_mask=None, is_image=None, routing_noise=None,
  labels=None, position_ids=None) -> (logits, loss_sum, num_targets, aux_loss, routing_stats)`
- `llm.init_cache(batch_size, max_len)` and `llm.forward_step(inputs_embeds, attention_mask,
  cache_position, key_cache, value_cache, is_image=None, routing_noise=None)
  -> (logits, key_cache, value_cache)` for incremental decoding with static shapes
- `causal_lm_loss(logits, labels) -> (loss_sum, num_targets)`, `LLMDecodeStep` (greedy decoding of an LLM:
  `eve_ms.inference.generate.greedy_generate`, the generation loop of every model)

`attention_mask` is [B, S] (or [B, M] with a cache): 1 = real token, 0 = padding, left or right.
Position ids follow from it as `cumsum(mask) - 1` (Hugging Face's rule for left padding), so a
left-padded sample gets the same positions, and the same outputs on its real tokens, as alone.
Position ids must stay below `max_position_embeddings`, the length of the rotary tables.
All shapes are static: graph mode compiles one graph per input shape.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from eve_ms.config import IGNORE_INDEX, ROPE_TYPES, ConfigError, EVFConfig, LLMConfig
from eve_ms.models.ffn import FeedForward, ffn_param_count
from eve_ms.models.rope import rope_tables
from eve_ms.ops.fused import (
    ROTARY_MODE_ROTATE_HALF, FusedOps, flash_attention_kwargs, flash_attention_mask, rotary_layout, select_fused_ops,
)

__all__ = [
    "LLM", "LLMDecodeStep", "RMSNorm", "Attention", "DecoderLayer", "Decoder", "Embedding",
    "causal_lm_loss",
    "llm_param_count", "ffn_param_count", "ROPE_TYPES",
]

# Masked attention scores get this added: finite in float16, bfloat16 and float32 alike. The bias reaches
# an attention cell as an input, and mixed precision casts a float16 cell's inputs to float16, where the
# float32 minimum (the value used before) is -inf: a left-padding query that may see nothing then got
# NaN weights, NaN keys and values went into the cache, and 0 * NaN made every later step of the sample
# NaN (PyNative float16 generation answered nothing). exp(score - 65504) is 0 in float32 as it was.
_MASK_MIN = float(np.finfo(np.float16).min)


# --------------------------------------------------------------------------- building blocks


class RMSNorm(nn.Cell):
    """x / rms(x) * weight, normalised in float32 like Hugging Face's LlamaRMSNorm.

    `fused` (Ascend): one `ops.rms_norm` call in float32, as MindFormers' LlamaRMSNorm makes it, in
    place of the square / mean / rsqrt / multiply chain; the weight multiplies before the result is
    rounded to x's dtype (the composed path rounds first), and the output dtype is the composed one's.
    """

    def __init__(self, hidden_size: int, eps: float, fused: bool = False):
        super().__init__()
        self.weight = Parameter(initializer("ones", (hidden_size,), ms.float32), name="weight")
        self.eps = eps
        self.fused = fused

    def construct(self, x):
        dtype = x.dtype
        if self.fused:
            out = ops.rms_norm(x.astype(ms.float32), self.weight.astype(ms.float32), self.eps)[0]
            # weight * x.astype(dtype) is float32 when either is: round only where the composed path does
            return out.astype(dtype) if dtype == self.weight.dtype else out
        x32 = x.astype(ms.float32)
        x32 = x32 * ops.rsqrt(ops.mean(x32 * x32, -1, keep_dims=True) + self.eps)
        return self.weight * x32.astype(dtype)


class Embedding(nn.Cell):
    """Token embedding whose table is named `weight`, as in Hugging Face (nn.Embedding calls it otherwise)."""

    def __init__(self, vocab_size: int, hidden_size: int, init_std: float = 0.02):
        super().__init__()
        self.weight = Parameter(initializer(Normal(init_std), (vocab_size, hidden_size), ms.float32), name="weight")

    def construct(self, input_ids):
        return ops.gather(self.weight, input_ids, 0)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return ops.cat((-x[..., half:], x[..., :half]), -1)


def _apply_rope(x, cos, sin):
    """x [B, heads, S, D]; cos, sin [B, 1, S, D]."""
    return x * cos + _rotate_half(x) * sin


# --------------------------------------------------------------------------- attention


class Attention(nn.Cell):
    """Multi-head attention with grouped-query heads (num_kv_heads divides num_heads) and rotary positions.

    Without a cache, keys and values are this call's tokens. With a cache ([B, n_kv, M, head_dim]),
    this call's keys and values are written into cache slots `write_start .. write_start + S - 1`
    (`write_start` a scalar tensor, so decoding steps share one compiled graph) and the queries
    attend over all M slots; `mask_bias` (0 where a query may see a slot, the float32 minimum where
    not) is added to the scores: an added mask needs no backward pass of its own, unlike a masked fill.

    With `fused.attention` (Ascend), a call without a cache whose projections are float16 / bfloat16
    runs `ops.flash_attention_score` in layout BSND (rotary through `ops.rotary_position_embedding`
    when `fused.rotary`), never materialising the [B, heads, S, S] scores; its returned keys and
    values are BSND, which only a cache would read. Calls with a cache (prefill into it and one-token
    decode steps) keep the composed attention: their keys span all M cache slots, a decode step has
    one query row (nothing to tile), and FlashAttentionScore is the training operator; float32
    projections keep it too (the operator takes float16 / bfloat16 only).
    """

    # True only in tests (monkeypatched), to run the fused path's plumbing in float32 with stand-in operators.
    flash_in_float32 = False

    def __init__(self, config: LLMConfig, fused: FusedOps | None = None):
        super().__init__()
        h, d = config.hidden_size, config.dim_per_head
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.kv_heads, d
        bias = config.attention_bias
        self.q_proj = nn.Dense(h, self.num_heads * d, has_bias=bias)
        self.k_proj = nn.Dense(h, self.num_kv_heads * d, has_bias=bias)
        self.v_proj = nn.Dense(h, self.num_kv_heads * d, has_bias=bias)
        self.o_proj = nn.Dense(self.num_heads * d, h, has_bias=bias)
        self.scale = d**-0.5
        # q @ k^T with k as stored: transposing k first copied it whole every call (with a cache, all M slots
        # of it: 6 % of a small decode step's kernel time, tools/benchmarks/profile_decode.py)
        self.scores_matmul = ops.BatchMatMul(transpose_b=True)
        fused = fused if fused is not None else select_fused_ops(config)
        self.fused_attention, self.fused_rotary = fused.attention, fused.rotary
        self.flash_kwargs = flash_attention_kwargs(config)

    def _heads(self, x, num_heads):
        b, s, _ = x.shape
        return ops.transpose(x.reshape(b, s, num_heads, self.head_dim), (0, 2, 1, 3))

    def _repeat_kv(self, x):
        """[B, n_kv, K, D] -> [B, n_heads, K, D]; query head j reads kv head j // (n_heads / n_kv)."""
        if self.num_kv_heads == self.num_heads:
            return x
        b, n_kv, k, d = x.shape
        rep = self.num_heads // n_kv
        return ops.broadcast_to(x.reshape(b, n_kv, 1, k, d), (b, n_kv, rep, k, d)).reshape(b, n_kv * rep, k, d)

    def construct(self, x, cos, sin, mask_bias, key_cache=None, value_cache=None, write_start=None):
        """x [B, S, H]; cos, sin [B, 1, S, D]; mask_bias [B, 1, S, K] float32 -> (out [B, S, H], keys, values)."""
        b, s, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if key_cache is None and self.fused_attention and (q.dtype != ms.float32 or self.flash_in_float32):
            return self._flash_attention(q, k, v, cos, sin, mask_bias)
        q = _apply_rope(self._heads(q, self.num_heads), cos, sin)
        k = _apply_rope(self._heads(k, self.num_kv_heads), cos, sin)
        v = self._heads(v, self.num_kv_heads)
        if key_cache is not None:
            k = _write_cache(key_cache, k, write_start)
            v = _write_cache(value_cache, v, write_start)

        # the scale on q: [S, D] per head is smaller than the [S, K] scores
        scores = self.scores_matmul(q * self.scale, self._repeat_kv(k))
        scores = scores.astype(ms.float32) + mask_bias
        probs = ops.softmax(scores, -1).astype(q.dtype)
        out = ops.matmul(probs, self._repeat_kv(v))
        out = ops.transpose(out, (0, 2, 1, 3)).reshape(b, s, self.num_heads * self.head_dim)
        return self.o_proj(out), k, v

    def _flash_attention(self, q, k, v, cos, sin, mask_bias):
        """The fused path: q, k, v projections [B, S, heads * D] -> (out [B, S, H], keys, values BSND)."""
        b, s, _ = q.shape
        q = q.reshape(b, s, self.num_heads, self.head_dim)
        k = k.reshape(b, s, self.num_kv_heads, self.head_dim)
        v = v.reshape(b, s, self.num_kv_heads, self.head_dim)
        cos, sin = rotary_layout(cos.astype(q.dtype), sin.astype(q.dtype), b, s)
        if self.fused_rotary:
            q = ops.rotary_position_embedding(q, cos, sin, ROTARY_MODE_ROTATE_HALF)  # as _apply_rope
            k = ops.rotary_position_embedding(k, cos, sin, ROTARY_MODE_ROTATE_HALF)
        else:
            q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)  # the formula broadcasts in BSND too
        out = ops.flash_attention_score(q, k, v, attn_mask=flash_attention_mask(mask_bias), **self.flash_kwargs)
        return self.o_proj(out.reshape(b, s, self.num_heads * self.head_dim)), k, v


def _write_cache(cache, new, start):
    """Write new [B, n, S, D] into cache [B, n, M, D] at slots start .. start + S - 1, in place; returns the cache.

    A ScatterNdUpdate moves only the S new slots: on a cache Parameter (`eve_ms.models.kv_cache`)
    nothing else of the cache is copied, and the write persists across calls."""
    b, n, length, _ = new.shape
    shape = (b, n, length, 1)
    index = ops.concat((
        ops.broadcast_to(ops.arange(b, dtype=ms.int32).reshape(b, 1, 1, 1), shape),
        ops.broadcast_to(ops.arange(n, dtype=ms.int32).reshape(1, n, 1, 1), shape),
        ops.broadcast_to((ops.arange(length, dtype=ms.int32) + start).reshape(1, 1, length, 1), shape),
    ), -1)
    return ops.scatter_nd_update(cache, index, new.astype(cache.dtype))


class AttentionShortcut(nn.Cell):
    """out_proj(fast_gelu(in_proj(a))) of the attention output a: the Eve release's `attn_linear`
    (Linear(H, width) -> FastGeLU -> Linear(width, H), no biases), added beside the identity shortcut.

    PanGu-pi's paper (Wang et al. 2023, after Tang et al. 2021) puts its augmented shortcut on the
    block's input; the release, which is what Eve ran, feeds it the attention output instead.
    """

    def __init__(self, hidden_size: int, width: int, act: str):
        super().__init__()
        if act != "fast_gelu":
            raise ConfigError(f"unsupported attention-shortcut activation {act!r} (supported: fast_gelu)")
        self.in_proj = nn.Dense(hidden_size, width, has_bias=False)
        self.out_proj = nn.Dense(width, hidden_size, has_bias=False)

    def construct(self, a):
        return self.out_proj(ops.fast_gelu(self.in_proj(a)))


# --------------------------------------------------------------------------- decoder layer


class DecoderLayer(nn.Cell):
    """Pre-norm block: a = attn(norm(x)); h = x + a [+ attn_linear(a)]; out = h + mlp(norm(h)).

    `mlp` is the `FeedForward` of kind `config.ffn_kind(layer_index)`, or an `EVFLayer`
    (eve_ms/models/evf.py, both experts of that kind) when this layer is in
    `evf_config.layer_indices(num_layers)`; EVF layers also take the modality mask, the valid-token
    mask and routing noise, and return an aux loss and routing statistics. `attn_linear` (an
    `AttentionShortcut`) exists where `config.attn_shortcut_width_of(layer_index)` > 0.
    """

    def __init__(self, config: LLMConfig, layer_index: int, evf_config: EVFConfig | None = None,
                 fused: FusedOps | None = None):
        super().__init__()
        fused = fused if fused is not None else select_fused_ops(config)
        self.self_attn = Attention(config, fused)
        ffn_kind = config.ffn_kind(layer_index)
        self.is_evf = evf_config is not None and layer_index in evf_config.layer_indices(config.num_layers)
        if self.is_evf:
            from eve_ms.models.evf import EVFLayer  # only EVF models import the EVF layer

            self.mlp = EVFLayer(config, evf_config, ffn_kind, fused=fused)
        else:
            self.mlp = FeedForward(config, ffn_kind, fused)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, fused.rms_norm)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, fused.rms_norm)
        shortcut_width = config.attn_shortcut_width_of(layer_index)
        self.has_attn_shortcut = shortcut_width > 0
        if self.has_attn_shortcut:
            self.attn_linear = AttentionShortcut(config.hidden_size, shortcut_width, config.attn_shortcut_act)

    def construct(self, x, cos, sin, mask_bias, is_image, valid, noise,
                  key_cache=None, value_cache=None, write_start=None):
        """-> (out, keys, values, aux_loss, routing_stats); the last two are None for a dense FFN."""
        attn_out, k, v = self.self_attn(
            self.input_layernorm(x), cos, sin, mask_bias, key_cache, value_cache, write_start
        )
        h = x + attn_out
        if self.has_attn_shortcut:
            h = h + self.attn_linear(attn_out)
        if self.is_evf:
            y, aux_loss, stats = self.mlp(self.post_attention_layernorm(h), is_image, valid, noise)
            return h + y, k, v, aux_loss, stats
        return h + self.mlp(self.post_attention_layernorm(h)), k, v, None, None


# --------------------------------------------------------------------------- decoder stack


class Decoder(nn.Cell):
    """Embedding, decoder layers and final norm: Hugging Face's `LlamaModel`, named `model` in the LM."""

    def __init__(self, config: LLMConfig, evf_config: EVFConfig | None = None):
        super().__init__()
        # llm.fused_ops against the device target, once for the whole stack (eve_ms/ops/fused.py)
        self.fused_ops = select_fused_ops(config)
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, config.embedding_init_std)
        self.layers = nn.CellList([DecoderLayer(config, i, evf_config, self.fused_ops)
                                   for i in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, self.fused_ops.rms_norm)
        cos, sin = rope_tables(config)
        self.rope_cos, self.rope_sin = Tensor(cos), Tensor(sin)
        self.evf_layer_indices = [i for i, layer in enumerate(self.layers) if layer.is_evf]

    def construct(self, x, position_ids, mask_bias, is_image, valid, routing_noise,
                  key_cache=None, value_cache=None, write_start=None):
        """x [B, S, H] -> (hidden [B, S, H], key caches, value caches, aux_loss, routing_stats).

        With `key_cache`/`value_cache` ([L, B, n_kv, M, D]) the returned caches are the updated
        ones; without, None. Caches may also be per-layer tuples of [B, n_kv, M, D] (a `KVCache`'s
        Parameters): they are written in place and returned as they came.
        """
        b, s = position_ids.shape
        cos = ops.gather(self.rope_cos, position_ids, 0).astype(x.dtype).reshape(b, 1, s, -1)
        sin = ops.gather(self.rope_sin, position_ids, 0).astype(x.dtype).reshape(b, 1, s, -1)
        keys, values, aux_losses, stats = [], [], [], []
        # per-layer views by unstacking: indexing the stacked tensor (cache[i]) is a StridedSlice that
        # MindSpore's CPU kernel runs ~20x slower, and it dominated the time of a decoding step
        noises = ops.unstack(routing_noise, 0) if self.evf_layer_indices else ()
        per_layer = isinstance(key_cache, (tuple, list))
        key_layers, value_layers = (key_cache, value_cache) if per_layer else ((), ())
        if key_cache is not None and not per_layer:
            key_layers, value_layers = ops.unstack(key_cache, 0), ops.unstack(value_cache, 0)
        evf_index = 0
        for i, layer in enumerate(self.layers):
            noise = None
            if layer.is_evf:
                noise = noises[evf_index]
                evf_index += 1
            if key_cache is None:
                x, k, v, aux, stat = layer(x, cos, sin, mask_bias, is_image, valid, noise)
            else:
                x, k, v, aux, stat = layer(
                    x, cos, sin, mask_bias, is_image, valid, noise, key_layers[i], value_layers[i], write_start
                )
            if key_cache is not None:
                keys.append(k)
                values.append(v)
            if layer.is_evf:
                aux_losses.append(aux)
                stats.append(stat)
        x = self.norm(x)
        if evf_index:
            aux_loss = ops.stack(aux_losses).astype(ms.float32).sum()
            routing_stats = ops.stack(stats).astype(ms.float32)
        else:
            aux_loss = ops.zeros((), ms.float32)
            routing_stats = ops.zeros((0, 0), ms.float32)
        if key_cache is None:
            return x, None, None, aux_loss, routing_stats
        if per_layer:
            return x, tuple(keys), tuple(values), aux_loss, routing_stats
        return x, ops.stack(keys), ops.stack(values), aux_loss, routing_stats


# --------------------------------------------------------------------------- causal LM


def causal_lm_loss(logits, labels, ignore_index: int = IGNORE_INDEX):
    """Next-token cross entropy: logits [B, S, V] at position t predict labels[t + 1].

    Returns (loss_sum, num_targets), float32 scalars: the sum of token losses and the number of
    target tokens (labels != ignore_index after the shift). The mean is loss_sum / num_targets;
    data-parallel training divides by the target count of the global batch instead.
    """
    batch, vocab = logits.shape[0], logits.shape[-1]
    # the labels shift, not the logits: slicing [B, S, V] would copy it (and its gradient) whole
    last = ops.full((batch, 1), ignore_index, dtype=labels.dtype)
    targets = ops.concat((labels[:, 1:], last), 1).reshape(-1).astype(ms.int32)
    counted = targets != ignore_index
    log_probs = ops.log_softmax(logits.astype(ms.float32).reshape(-1, vocab), -1)
    safe_targets = ops.where(counted, targets, ops.zeros_like(targets))
    picked = ops.gather_elements(log_probs, 1, safe_targets.reshape(-1, 1)).reshape(-1)
    mask = counted.astype(ms.float32)
    return -(picked * mask).sum(), mask.sum()


def _mask_bias(allowed):
    """allowed [B, 1, S, K] bool -> float32 0 where allowed, `_MASK_MIN` (-65504) where not.

    Finite in every compute dtype, so a query that may see nothing (a padding row) gets finite
    weights, not NaN; a score plus -65504 is far below any real score, so masked slots get weight
    exactly 0 (the exponential underflows)."""
    return ops.where(allowed, ops.zeros((), ms.float32), ops.full((), _MASK_MIN, dtype=ms.float32))


def _positions_from_mask(mask):
    """cumsum(mask) - 1, clipped at 0: real tokens count 0, 1, 2, ... whatever padding precedes them."""
    return ops.clip(ops.cumsum(mask, 1) - 1, 0, None)


class LLM(nn.Cell):
    """Llama-style causal LM: `model` (Decoder) + `lm_head` (absent when embeddings are tied).

    `evf_config` (enabled) turns the FFN of the layers it names into EVF layers; a dense model never
    imports `eve_ms/models/evf.py`. Aux losses of EVF layers are returned unscaled: whoever builds
    the total loss multiplies their sum by `evf_config.aux_loss_alpha`.
    """

    def __init__(self, config: LLMConfig, evf_config: EVFConfig | None = None):
        super().__init__()
        _check_config(config)
        self.config = config
        self.evf_config = evf_config if evf_config is not None and evf_config.enabled else None
        self.model = Decoder(config, self.evf_config)
        self.num_evf_layers = len(self.model.evf_layer_indices)
        self.tie_word_embeddings = config.tie_word_embeddings
        if not self.tie_word_embeddings:
            self.lm_head = nn.Dense(config.hidden_size, config.vocab_size, has_bias=False)

    # ------------------------------------------------------------------ helpers

    def set_evf_mode(self, mode: str) -> None:
        """Switch every EVF layer to 'multimodal' | 'language_only' | 'moe' (before compiling a graph)."""
        for i in self.model.evf_layer_indices:
            self.model.layers[i].mlp.set_mode(mode)

    def embed(self, input_ids):
        """Token embeddings [B, S, H] of input_ids [B, S]."""
        return self.model.embed_tokens(input_ids)

    def _logits(self, hidden):
        if self.tie_word_embeddings:
            return ops.matmul(hidden, ops.transpose(self.model.embed_tokens.weight, (1, 0)))
        return self.lm_head(hidden)

    def _routing_inputs(self, mask, is_image, routing_noise, b, s):
        """(valid, is_image, routing_noise) for the EVF layers; all None in a dense model."""
        if not self.num_evf_layers:
            return None, None, None
        valid = mask.astype(ms.bool_)
        if is_image is None:
            is_image = ops.zeros((b, s), ms.bool_)
        if routing_noise is None:
            # drawn here, as an input of every EVF layer, never inside an allocation kernel
            routing_noise = ops.uniform(
                (self.num_evf_layers, b, s), Tensor(0.0, ms.float32), Tensor(1.0, ms.float32), dtype=ms.float32
            )
        return valid, is_image, routing_noise

    # ------------------------------------------------------------------ full-sequence forward

    def construct(self, input_ids, attention_mask=None, position_ids=None):
        """input_ids [B, S] (+ optional attention_mask [B, S], position_ids [B, S]) -> logits [B, S, V]."""
        logits, _, _, _, _ = self.forward_embeds(self.embed(input_ids), attention_mask, position_ids=position_ids)
        return logits

    def forward_embeds(self, inputs_embeds, attention_mask=None, is_image=None, routing_noise=None,
                       labels=None, position_ids=None):
        """The whole sequence from input embeddings (the multimodal model's entry point).

        inputs_embeds [B, S, H]; attention_mask [B, S] (1 real, 0 padding; default all real);
        is_image [B, S] bool (modality mask for EVF routing; default all text); routing_noise
        [num_evf_layers, B, S] float32 in [0, 1) (default: drawn uniformly here); labels [B, S]
        with IGNORE_INDEX (-100) where no loss is taken, aligned with the inputs (shifted inside);
        position_ids [B, S] (default cumsum(attention_mask) - 1).

        Returns (logits [B, S, V], loss_sum, num_targets, aux_loss, routing_stats):
        loss_sum / num_targets as `causal_lm_loss` (both 0 without labels); aux_loss the unscaled
        sum over EVF layers (0 for a dense model); routing_stats [num_evf_layers, NUM_ROUTING_STATS]
        float32 (shape [0, 0] for a dense model).
        """
        b, s, _ = inputs_embeds.shape
        mask = ops.ones((b, s), ms.int32) if attention_mask is None else attention_mask.astype(ms.int32)
        if position_ids is None:
            position_ids = _positions_from_mask(mask)
        causal = ops.tril(ops.ones((s, s), ms.int32)).astype(ms.bool_)
        allowed = ops.logical_and(causal.reshape(1, 1, s, s), mask.astype(ms.bool_).reshape(b, 1, 1, s))
        valid, is_image, routing_noise = self._routing_inputs(mask, is_image, routing_noise, b, s)
        hidden, _, _, aux_loss, routing_stats = self.model(
            inputs_embeds, position_ids.astype(ms.int32), _mask_bias(allowed), is_image, valid, routing_noise
        )
        logits = self._logits(hidden)
        if labels is None:
            loss_sum, num_targets = ops.zeros((), ms.float32), ops.zeros((), ms.float32)
        else:
            loss_sum, num_targets = causal_lm_loss(logits, labels)
        return logits, loss_sum, num_targets, aux_loss, routing_stats

    # ------------------------------------------------------------------ incremental decoding

    def init_cache(self, batch_size: int, max_len: int, dtype=None):
        """Zeroed key and value caches, each [num_layers, B, num_kv_heads, max_len, head_dim]."""
        c = self.config
        if max_len > c.max_position_embeddings:
            raise ValueError(f"cache length {max_len} exceeds max_position_embeddings={c.max_position_embeddings}")
        dtype = dtype or self.model.embed_tokens.weight.dtype
        shape = (c.num_layers, batch_size, c.kv_heads, max_len, c.dim_per_head)
        return ops.zeros(shape, dtype), ops.zeros(shape, dtype)

    def forward_step(self, inputs_embeds, attention_mask, cache_position, key_cache, value_cache,
                     is_image=None, routing_noise=None, last_only=False):
        """Run S new tokens against the cache: a prefill (S = prompt length) or a decode step (S = 1).

        inputs_embeds [B, S, H] go to cache slots cache_position .. cache_position + S - 1
        (cache_position: int32 scalar tensor). attention_mask [B, M] covers all M cache slots,
        the new ones included: 1 where a slot holds a real token. Each new token attends to the
        real slots at or before its own; its position id is the count of real slots before it.
        is_image [B, S], routing_noise [num_evf_layers, B, S] as in `forward_embeds`.
        The caller keeps cache_position + S <= M (a tensor value, so it cannot be checked here).
        The caches are stacked [L, B, n_kv, M, D] tensors (`init_cache`), or per-layer tuples of
        Parameters (`eve_ms.models.kv_cache.KVCache`), written in place.

        Returns (logits [B, S, V], key_cache, value_cache) with the new keys and values written;
        with `last_only` (a Python bool) the logits of the last position only, [B, 1, V]: a
        prefill that only needs the next token skips the LM head on the other S - 1 positions.
        """
        b, s, _ = inputs_embeds.shape
        m = attention_mask.shape[1]
        mask = attention_mask.astype(ms.int32)
        start = cache_position.astype(ms.int32)
        new_slots = ops.arange(s, dtype=ms.int32) + start
        position_ids = ops.gather(_positions_from_mask(mask), new_slots, 1)
        visible = ops.arange(m, dtype=ms.int32).reshape(1, m) <= new_slots.reshape(s, 1)
        allowed = ops.logical_and(visible.reshape(1, 1, s, m), mask.astype(ms.bool_).reshape(b, 1, 1, m))
        valid, is_image, routing_noise = self._routing_inputs(
            ops.gather(mask, new_slots, 1), is_image, routing_noise, b, s
        )
        hidden, key_cache, value_cache, _, _ = self.model(
            inputs_embeds, position_ids, _mask_bias(allowed), is_image, valid, routing_noise, key_cache, value_cache,
            start
        )
        if last_only:
            hidden = hidden[:, -1:]
        return self._logits(hidden), key_cache, value_cache


class LLMDecodeStep(nn.Cell):
    """`llm.forward_step` on token ids, as a cell of its own so graph mode compiles it (one graph per S)."""

    def __init__(self, llm: LLM):
        super().__init__(auto_prefix=False)  # keep the LLM's own parameter names
        self.llm = llm

    def construct(self, input_ids, attention_mask, cache_position, key_cache, value_cache):
        return self.llm.forward_step(self.llm.embed(input_ids), attention_mask, cache_position, key_cache, value_cache)


# --------------------------------------------------------------------------- config checks and sizes


def _check_config(config: LLMConfig) -> None:
    config.validate()  # the checks live with the fields (LLMConfig); re-run for a config changed after it was built


def llm_param_count(config: LLMConfig) -> int:
    """Parameters of the dense LLM (embeddings, layers, norms, attention shortcuts, untied lm_head)."""
    h, d = config.hidden_size, config.dim_per_head
    q, kv = config.num_heads * d, config.kv_heads * d
    attention = h * q + 2 * h * kv + q * h
    if config.attention_bias:
        attention += q + 2 * kv + h
    layers = 0
    for i in range(config.num_layers):
        shortcut = 2 * h * config.attn_shortcut_width_of(i)
        layers += attention + ffn_param_count(config, config.ffn_kind(i)) + shortcut + 2 * h
    embeddings = config.vocab_size * h * (1 if config.tie_word_embeddings else 2)
    return embeddings + layers + h
