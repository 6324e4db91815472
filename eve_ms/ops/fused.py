"""MindSpore's fused Ascend operators for the LLM's building blocks, and the choice between them and composed ops.

`select_fused_ops(config)` maps `llm.fused_ops` (auto | on | off) and the device target to a
`FusedOps` (one flag per fused operator), once, when the model is built, as `evf.kernel` is
mapped by `eve_ms.ops.kernels.select_backend`:

- `off` gives the composed MindSpore ops everywhere (what every device ran before this module).
- `on` gives every fused operator; on a device other than Ascend, or when the model's shape breaks
  an operator's documented constraint, it is a `ConfigError` naming the operator: asked-for
  kernels never degrade silently.
- `auto` gives the fused operators on Ascend and the composed ops elsewhere; on Ascend an operator
  whose constraint the model breaks is left out with a logged warning.

The operators (MindSpore 2.9, all "Ascend" only; docs/design.md lists their constraints):

| flag | operator | replaces |
|---|---|---|
| attention | `ops.flash_attention_score` | scores, mask, softmax, probs @ v of the full-sequence attention |
| rotary | `ops.rotary_position_embedding` (mode 0) | x * cos + rotate_half(x) * sin, inside the fused attention |
| rms_norm | `ops.rms_norm` | the float32 mean-square chain of `RMSNorm` |
| swiglu | `ops.swiglu` | silu(gate) * up of the `swiglu` FFN |

FastGeLU is not a flag: `ops.fast_gelu` is MindSpore's FastGeLU primitive on every device already.
The `series` FFN's silu(gate) + fast_gelu(gate2) has no fused operator, and `ops.silu` is documented
for float16 / float32 only (not bfloat16), so that FFN stays composed.

The small functions below build each fused call's arguments (`flash_attention_kwargs`,
`flash_attention_mask`, `rotary_layout`); the tests check them on CPU without running the operators.
"""
from __future__ import annotations

import dataclasses
import logging

import mindspore as ms
from mindspore import ops

from eve_ms.config import FUSED_OPS_CHOICES, ConfigError, LLMConfig
from eve_ms.models.rope import rope_inverse_frequencies

logger = logging.getLogger(__name__)

FUSED_DEVICE = "Ascend"
# flag -> the MindSpore 2.9 API it calls (also what error messages name)
FUSED_OP_APIS = {
    "attention": "mindspore.ops.flash_attention_score",
    "rotary": "mindspore.ops.rotary_position_embedding",
    "rms_norm": "mindspore.ops.rms_norm",
    "swiglu": "mindspore.ops.swiglu",
}

# The layout of every fused attention call: [B, S, N, D] is what the q/k/v projections give after a
# reshape (no transpose), the rotary op accepts it with cos/sin [B, S, 1, D], and FlashAttentionScore
# returns it, so the output reaches o_proj by a reshape. BNSD would need a transpose before and after,
# and the rotary op refuses BNSD when B * N > 8 S with 32-byte-aligned D (its docs).
FLASH_LAYOUT = "BSND"
FLASH_SPARSE_MODE = 0  # defaultMask: the full [B, 1, S, S] mask given is applied as it is
FLASH_MAX_TOKENS = 2147483647  # pre_tokens / next_tokens: no band limit (the mask carries causality)
FLASH_HEAD_DIM_MULTIPLE, FLASH_MAX_HEAD_DIM, FLASH_MAX_HEADS = 16, 512, 256
ROTARY_MAX_HEAD_DIM, ROTARY_MAX_BATCH_OR_HEADS = 896, 1000
ROTARY_MODE_ROTATE_HALF = 0  # GPT-NeoX / Llama rotate_half (1 would be GPT-J's interleaved pairs)


@dataclasses.dataclass(frozen=True)
class FusedOps:
    """Which fused Ascend operator each building block calls (False: the composed MindSpore ops)."""

    attention: bool = False
    rotary: bool = False
    rms_norm: bool = False
    swiglu: bool = False

    @property
    def names(self) -> tuple:
        """The flags that are on, in FUSED_OP_APIS order."""
        return tuple(name for name in FUSED_OP_APIS if getattr(self, name))


COMPOSED = FusedOps()


def _canonical_target(device_target: str) -> str:
    from eve_ms.runtime import resolve_device_target

    if not device_target:
        raise ValueError("device_target must be given (CPU, GPU or Ascend)")
    return resolve_device_target(device_target)


def check_fused_ops_setting(setting: str, device_target: str | None = None, where: str = "") -> None:
    """The checks that need no model: a known setting, and `on` only on Ascend. `where` names the file."""
    suffix = f" in {where}" if where else ""
    if setting not in FUSED_OPS_CHOICES:
        raise ConfigError(f"llm.fused_ops must be one of {FUSED_OPS_CHOICES}, got {setting!r}{suffix}")
    if setting == "on" and device_target is not None and _canonical_target(device_target) != FUSED_DEVICE:
        apis = ", ".join(FUSED_OP_APIS.values())
        raise ConfigError(
            f"llm.fused_ops: on asks for MindSpore's fused Ascend operators, but the device target is "
            f"{_canonical_target(device_target)}: {FUSED_OP_APIS['attention']} (attention) and the others "
            f"({apis}) run on Ascend only in MindSpore 2.9. Use llm.fused_ops: auto (fused on Ascend, composed "
            f"elsewhere) or off{suffix}")


def fused_op_constraints(config: LLMConfig) -> dict:
    """flag -> why the model's shape breaks the operator's documented constraints ('' when it does not)."""
    d, n, n_kv = config.dim_per_head, config.num_heads, config.kv_heads
    attention = []
    if d % FLASH_HEAD_DIM_MULTIPLE or d > FLASH_MAX_HEAD_DIM:
        attention.append(f"head_dim={d} must be a multiple of {FLASH_HEAD_DIM_MULTIPLE} up to {FLASH_MAX_HEAD_DIM}")
    if n > FLASH_MAX_HEADS:
        attention.append(f"num_heads={n} must be at most {FLASH_MAX_HEADS}")
    if n % n_kv:
        attention.append(f"num_kv_heads={n_kv} must divide num_heads={n}")
    rotary = []
    if d >= ROTARY_MAX_HEAD_DIM or d % 2:
        rotary.append(f"head_dim={d} must be even and below {ROTARY_MAX_HEAD_DIM}")
    if n >= ROTARY_MAX_BATCH_OR_HEADS:
        rotary.append(f"num_heads={n} must be below {ROTARY_MAX_BATCH_OR_HEADS}")
    _, attention_factor = rope_inverse_frequencies(config)
    if attention_factor > 1:  # YaRN scales cos and sin; the operator documents them in [-1, 1]
        rotary.append(f"cos/sin scaled by the rope attention factor {attention_factor:.4g} leave [-1, 1]")
    rms_norm = [] if 0 < config.rms_norm_eps <= 1 else [f"rms_norm_eps={config.rms_norm_eps} must be in (0, 1]"]
    return {"attention": "; ".join(attention), "rotary": "; ".join(rotary), "rms_norm": "; ".join(rms_norm),
            "swiglu": ""}


_warned: set = set()


def select_fused_ops(config: LLMConfig, device_target: str | None = None) -> FusedOps:
    """The fused operators the model built from `config` uses on `device_target` (default: MindSpore's context)."""
    setting = getattr(config, "fused_ops", "auto")
    check_fused_ops_setting(setting)
    if setting == "off":
        return COMPOSED
    if device_target is None:
        device_target = ms.get_context("device_target")
    check_fused_ops_setting(setting, device_target)
    if _canonical_target(device_target) != FUSED_DEVICE:
        return COMPOSED  # auto elsewhere
    broken = fused_op_constraints(config)
    if broken["attention"] and not broken["rotary"]:
        broken["rotary"] = "it runs inside the fused attention only, which is off"
    flags = {}
    for name, reason in broken.items():
        if reason and setting == "on":
            raise ConfigError(f"llm.fused_ops: on, but {FUSED_OP_APIS[name]} ({name}) does not apply to this model: "
                              f"{reason}. Use llm.fused_ops: auto (it falls back to the composed ops) or off")
        if reason and (name, reason) not in _warned:
            _warned.add((name, reason))
            logger.warning("llm.fused_ops=auto on Ascend: %s not used (%s); composed ops instead",
                           FUSED_OP_APIS[name], reason)
        flags[name] = not reason
    chosen = FusedOps(**flags)
    logger.info("llm.fused_ops=%s on %s: fused %s", setting, device_target, ", ".join(chosen.names) or "none")
    return chosen


# --------------------------------------------------------------------------- arguments of the fused calls


def flash_attention_kwargs(config: LLMConfig) -> dict:
    """Keyword arguments of `ops.flash_attention_score` for this model, besides q, k, v and attn_mask.

    Grouped-query heads need nothing but `head_num` = the query heads: the operator reads the
    kv head count from key's shape ([B, S, N_kv, D] in BSND) and maps query head j to kv head
    j // (N / N_kv), as `Attention._repeat_kv` does. The scale is ours (head_dim ** -0.5), applied to
    the scores; there is no attention dropout (keep_prob 1, no drop_mask).
    """
    return {
        "head_num": config.num_heads,
        "keep_prob": 1.0,
        "scalar_value": config.dim_per_head ** -0.5,
        "pre_tokens": FLASH_MAX_TOKENS,
        "next_tokens": FLASH_MAX_TOKENS,
        "inner_precise": 0,
        "input_layout": FLASH_LAYOUT,
        "sparse_mode": FLASH_SPARSE_MODE,
    }


def flash_attention_mask(mask_bias):
    """attn_mask [B, 1, S, S] uint8 for `ops.flash_attention_score`: 1 = masked out, 0 = attended.

    From the composed path's additive `mask_bias` (0 where a query may see a key, -65504 where
    not; causal and key padding, left or right, already combined). The diagonal is always
    attended: a left-padding query sees no key at all, and a fully masked row is not something
    the operator documents; the composed softmax gives such a row finite weights. Either
    way the row belongs to a padding token, whose output no loss, routing or answer reads.
    """
    s = mask_bias.shape[-1]
    index = ops.arange(s, dtype=ms.int32)
    off_diagonal = (index.reshape(s, 1) != index.reshape(1, s)).reshape(1, 1, s, s)
    return ops.logical_and(mask_bias < 0, off_diagonal).astype(ms.uint8)


def rotary_layout(cos, sin, batch: int, seq: int):
    """cos, sin [B, 1, S, D] (the decoder's tables) -> [B, S, 1, D], what the rotary op takes beside BSND x.

    A reshape, not a transpose: the dimension of size 1 moves, the memory order stays.
    """
    return cos.reshape(batch, seq, 1, -1), sin.reshape(batch, seq, 1, -1)
