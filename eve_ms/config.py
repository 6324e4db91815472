"""Model configuration: plain dataclasses, loaded from and saved to yaml.

Every number that shapes a model lives here, read in one place. A yaml file may be a
bare model config (the keys of `EveConfig`) or a MindFormers-style run file whose
`model.model_config` section holds them; either way an unknown or misspelled key is an
error that names the key and the file, and so is a missing required value.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union

import yaml

from eve_ms.errors import UsageError

IMAGE_TOKEN_INDEX = -200  # placeholder id of one image token in input_ids (LLaVA's convention)
IGNORE_INDEX = -100  # label of positions that do not count in the LM loss

MISSING = dataclasses.MISSING


class ConfigError(UsageError, ValueError):
    """A config file or dict that does not describe a valid model."""


# Per-backbone defaults for the fields a VisionConfig leaves as None: the activation and
# LayerNorm epsilon of the pretrained family, and the pixel normalisation its checkpoints expect.
BACKBONE_DEFAULTS = {
    "siglip": {
        "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "select_layer": -2,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    },
    "clip": {
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "select_layer": -2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    },
    "resnet": {
        "hidden_act": "relu", "layer_norm_eps": 1e-5, "select_layer": -1,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    },
}


@dataclass
class VisionConfig:
    """A frozen vision encoder behind `encode(pixels) -> [B, N, C]`.

    `backbone` names a registered encoder (siglip, clip, resnet). ViT fields apply to
    siglip/clip; `depths`, `hidden_sizes`, `embedding_size`, `layer_type` and the
    `downsample_*` flags apply to resnet (Hugging Face ResNetConfig names and meanings).
    Fields left as None take the backbone's value from `BACKBONE_DEFAULTS` when the config
    is built (so a saved yaml spells them out).
    """

    backbone: str = "siglip"
    image_size: int = 384
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    hidden_act: Optional[str] = None  # None: gelu_pytorch_tanh (siglip), quick_gelu (clip), relu (resnet)
    layer_norm_eps: Optional[float] = None  # None: 1e-6 (siglip), 1e-5 (clip)
    # Which hidden state feeds the adapter, indexed like Hugging Face's `hidden_states`
    # (0 = embeddings, i = output of layer / resnet stage i, negative counts from the end;
    # the last one is the model's last_hidden_state, post-layernormed for SigLIP).
    # None: the backbone's default, -2 for ViTs (second-to-last layer, as LLaVA/Eve) and -1
    # for ResNet (last stage). Layers after the selected one are not built.
    select_layer: Optional[int] = None
    # resnet only (Hugging Face ResNetConfig names)
    embedding_size: int = 64
    hidden_sizes: list = field(default_factory=lambda: [256, 512, 1024, 2048])
    depths: list = field(default_factory=lambda: [3, 4, 6, 3])
    layer_type: str = "bottleneck"  # bottleneck | basic
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False
    # pixel normalisation the data pipeline applies; None: the backbone's (see BACKBONE_DEFAULTS)
    image_mean: Optional[list] = None
    image_std: Optional[list] = None

    def __post_init__(self):
        # An unregistered backbone keeps its Nones; building it then names what is missing.
        for name, value in BACKBONE_DEFAULTS.get(self.backbone, {}).items():
            if getattr(self, name) is None:
                setattr(self, name, list(value) if isinstance(value, list) else value)
        depth = self.backbone_depth
        if self.select_layer is not None and not -(depth + 1) <= self.select_layer <= depth:
            raise ConfigError(
                f"vision.select_layer={self.select_layer} is outside -{depth + 1}..{depth} "
                f"({self.backbone} has {depth + 1} hidden states)"
            )

    @property
    def backbone_depth(self) -> int:
        """Transformer layers (ViTs) or stages (resnet) of the full backbone."""
        return len(self.hidden_sizes) if self.backbone == "resnet" else self.num_layers

    @property
    def layers_used(self) -> int:
        """How many layers / stages run to produce the selected hidden state."""
        if self.select_layer is None:
            raise ConfigError(f"vision.select_layer is not set and backbone {self.backbone!r} has no default")
        return self.select_layer % (self.backbone_depth + 1)

    @property
    def grid_size(self) -> int:
        """Side of the (square) token grid the encoder emits."""
        if self.backbone != "resnet":
            return self.image_size // self.patch_size
        # every stride-2 step (7x7 conv, max-pool, strided stage) pads so that side -> ceil(side / 2)
        halvings = 2 + sum(1 for s in range(self.layers_used) if s > 0 or self.downsample_in_first_stage)
        side = self.image_size
        for _ in range(halvings):
            side = (side + 1) // 2
        return side

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    @property
    def feature_dim(self) -> int:
        if self.backbone == "resnet":
            return self.hidden_sizes[self.layers_used - 1] if self.layers_used else self.embedding_size
        return self.hidden_size


ADAPTER_TYPES = ("ldp", "ldpv2", "mlp2x_gelu")


@dataclass
class AdapterConfig:
    """Vision adapter (projector) from encoder features to LLM width."""

    type: str = "ldp"  # ldp | ldpv2 | mlp2x_gelu
    layer_norm_eps: float = 1e-5  # LDP's LayerNorms (MobileVLM uses timm's LayerNorm2d default, 1e-5)
    # ldpv2 only: side of the average-pooled grid; None = ceil(grid / 2) (12 for a 24x24 grid)
    pool_grid: Optional[int] = None

    def __post_init__(self):
        if self.type not in ADAPTER_TYPES:
            raise ConfigError(f"unknown adapter type {self.type!r} (expected {', '.join(ADAPTER_TYPES)})")
        if self.pool_grid is not None and self.pool_grid < 1:
            raise ConfigError(f"adapter.pool_grid must be at least 1, got {self.pool_grid}")

    def num_output_tokens(self, vision: VisionConfig) -> int:
        return self.output_grid(vision.grid_size) ** 2

    def output_grid(self, grid_size: int) -> int:
        """Side of the token grid the adapter emits for an input grid of side `grid_size`."""
        if self.type == "ldp":
            return (grid_size + 1) // 2  # stride-2 3x3 depthwise conv with padding 1
        if self.type == "ldpv2":
            return self.pool_grid or (grid_size + 1) // 2
        if self.type == "mlp2x_gelu":
            return grid_size
        raise ConfigError(f"unknown adapter type {self.type!r} (expected ldp, ldpv2, mlp2x_gelu)")


FFN_KINDS = ("swiglu", "series")
FUSED_OPS_CHOICES = ("auto", "on", "off")  # llm.fused_ops (eve_ms/ops/fused.py)
ATTN_SHORTCUT_ACTIVATIONS = ("fast_gelu",)
# Hugging Face rope_scaling types and the keys each needs
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
ROPE_REQUIRED_KEYS = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


@dataclass
class LLMConfig:
    """Llama-style decoder (RMSNorm, rotary, grouped-query attention), layer by layer as the config says.

    Every layer is pre-norm attention + FFN. What differs between layers is decided here, by the
    layer's index against `layer_split` (see `ffn_kind` and `attn_shortcut_width_of`):

    - layers i < layer_split: FFN `ffn_below_split`;
    - layers i >= layer_split: FFN `ffn_from_split`, plus the attention-output shortcut when
      `attn_shortcut_width` > 0: h = x + a + out(act(in(a))), a the attention output (in: H -> width).

    FFN kinds: `swiglu` = down(silu(gate(x)) * up(x)); `series` (PanGu-pi's series-informed
    activation) = down((silu(gate(x)) + fast_gelu(gate2(x))) * up(x)). The defaults are a Llama
    (SwiGLU everywhere, no shortcut). PanGu-pi Pro as the Eve release builds it (its InternLM
    code): series below the split, SwiGLU + a width-128 FastGeLU shortcut from it on, q/k/v biases.
    """

    # The Eve release's rule for the split index (`split_dict` of its InternLMModel), by depth; used when
    # `layer_split` is None and the layers above and below it differ.
    RELEASE_LAYER_SPLITS: ClassVar[dict] = {12: 8, 22: 15, 29: 19}
    # Keys older configs may hold: key -> (value that loads as if absent, what to do instead).
    REMOVED_KEYS: ClassVar[dict] = {
        "augmented_shortcut_layers": ([], "the input-side linear shortcut was removed (no published model uses "
                                          "it). PanGu-pi Pro's shortcut, on the attention output, is set by "
                                          "`attn_shortcut_width` / `attn_shortcut_act` and applies from `layer_split` "
                                          "on: use those keys instead (weights of the old shortcut do not carry "
                                          "over), or delete this one"),
    }

    vocab_size: int = 48000
    hidden_size: int = 2048
    # PanGu-pi Pro's MLP ratio 8/3 rounded up to a multiple of 256 (InternEvo's rule): not published for the 1.5B
    intermediate_size: int = 5632
    num_layers: int = 22
    num_heads: int = 16
    num_kv_heads: Optional[int] = None  # None = num_heads (no GQA)
    head_dim: Optional[int] = None  # None = hidden_size // num_heads
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None  # Hugging Face rope_scaling dict (type + its fields)
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    ffn_below_split: str = "swiglu"  # swiglu | series
    ffn_from_split: str = "swiglu"  # swiglu | series
    attn_shortcut_width: int = 0  # bottleneck of the attention-output shortcut from layer_split on; 0: none
    attn_shortcut_act: str = "fast_gelu"
    layer_split: Optional[int] = None  # None: RELEASE_LAYER_SPLITS[num_layers] when the two layer kinds differ
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    # Std of the random token-embedding init (when not loading weights). 0.02 is the usual one; a
    # tiny LLM trained from scratch whose inputs include image tokens of unit RMS (the LDP ends in a
    # LayerNorm) learns to read them much sooner when its word vectors are of a comparable size.
    embedding_init_std: float = 0.02
    # MindSpore's fused Ascend operators (flash attention, RMSNorm, rotary, SwiGLU; eve_ms/ops/fused.py):
    # auto = on Ascend, composed ops elsewhere | on = required (an error off Ascend) | off = composed everywhere
    fused_ops: str = "auto"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """ConfigErrors name the `llm` key at fault (also for a config changed after it was built)."""
        if self.fused_ops not in FUSED_OPS_CHOICES:
            raise ConfigError(f"llm.fused_ops must be one of {FUSED_OPS_CHOICES}, got {self.fused_ops!r}")
        for key in ("ffn_below_split", "ffn_from_split"):
            if getattr(self, key) not in FFN_KINDS:
                raise ConfigError(f"llm.{key} must be one of {FFN_KINDS}, got {getattr(self, key)!r}")
        if self.attn_shortcut_width < 0:
            raise ConfigError(f"llm.attn_shortcut_width must be >= 0, got {self.attn_shortcut_width}")
        if self.attn_shortcut_act not in ATTN_SHORTCUT_ACTIVATIONS:
            raise ConfigError(f"llm.attn_shortcut_act must be one of {ATTN_SHORTCUT_ACTIVATIONS}, "
                              f"got {self.attn_shortcut_act!r}")
        self.split_index  # noqa: B018 (raises ConfigError when it cannot be resolved)
        if self.num_heads < 1 or self.num_heads % self.kv_heads:
            raise ConfigError(f"llm.num_heads={self.num_heads} is not a multiple of llm.num_kv_heads={self.kv_heads}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"llm.hidden_size={self.hidden_size} is not divisible by llm.num_heads={self.num_heads}; set llm.head_dim"
            )
        if self.dim_per_head % 2:
            raise ConfigError(f"llm.head_dim={self.dim_per_head} must be even for rotary embeddings")
        self.rope_type  # noqa: B018 (raises ConfigError on an unsupported or incomplete rope_scaling)

    @property
    def rope_type(self) -> str:
        """The rope_scaling type (default: none); a ConfigError when unsupported or missing a key it needs."""
        scaling = self.rope_scaling or {}
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise ConfigError(f"unsupported llm.rope_scaling type {rope_type!r} (supported: {', '.join(ROPE_TYPES)})")
        missing = [key for key in ROPE_REQUIRED_KEYS.get(rope_type, ()) if scaling.get(key) is None]
        if missing:
            raise ConfigError(f"llm.rope_scaling of type {rope_type!r} needs key(s) {missing}, got {scaling}")
        return rope_type

    @property
    def is_uniform(self) -> bool:
        """Whether every layer is built the same (then the split index does not matter)."""
        return self.ffn_below_split == self.ffn_from_split and not self.attn_shortcut_width

    @property
    def split_index(self) -> int:
        """First layer built as `ffn_from_split` (+ shortcut): `layer_split`, else the release's rule."""
        if self.layer_split is not None:
            if not 0 <= self.layer_split <= self.num_layers:
                raise ConfigError(f"llm.layer_split={self.layer_split} is outside 0..{self.num_layers}")
            return self.layer_split
        if self.is_uniform:
            return self.num_layers
        if self.num_layers not in self.RELEASE_LAYER_SPLITS:
            raise ConfigError(
                f"llm.layer_split is not set and the Eve release has no split for {self.num_layers} layers "
                f"(it has one for {sorted(self.RELEASE_LAYER_SPLITS)}): set llm.layer_split"
            )
        return self.RELEASE_LAYER_SPLITS[self.num_layers]

    def ffn_kind(self, layer_index: int) -> str:
        """`swiglu` or `series`: the FFN of layer `layer_index`."""
        return self.ffn_below_split if layer_index < self.split_index else self.ffn_from_split

    def attn_shortcut_width_of(self, layer_index: int) -> int:
        """Bottleneck width of layer `layer_index`'s attention-output shortcut; 0 when it has none."""
        return self.attn_shortcut_width if layer_index >= self.split_index else 0

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


EVF_LAYER_SETS = ("alternate", "all", "first_half", "second_half")
EVF_MODES = ("multimodal", "language_only", "moe")
EVF_COMBINES = ("unit", "prob")
EVF_KERNELS = ("auto", "composed", "custom")


@dataclass
class EVFConfig:
    """Elastic vision FFN layers (stage 3), DESIGN section 3.

    Every key is checked when the config is built, enabled or not, so a stage that does not use
    EVF still refuses a bad `evf` section (which it would hand down to stage 3).
    """

    enabled: bool = False
    # alternate (even layers) | all | first_half | second_half | explicit list of layer indices
    layers: Union[str, list] = "alternate"
    # multimodal | language_only | moe; moe in a stage-3 run trains the "MoE x2top1" ablation (plain top-1
    # routing, language FFNs trainable too): the one switch for it
    mode: str = "multimodal"
    strategy: str = "img_gbpr"  # random | gbpr | img_gbpr
    capacity_factor: float = 1.5  # while the layer trains
    # otherwise (set_train(False): generation, eval, chat); 2.0 = every token slot with two experts, as the
    # Eve release evaluates: inference drops nothing and does not depend on batching
    eval_capacity_factor: float = 2.0
    min_capacity: int = 4
    beta: float = 1.0
    redistribute_ratio: float = 0.5
    combine: str = "unit"  # unit | prob
    aux_loss_alpha: float = 0.001
    # Allocation implementation: auto (by device target) | composed (MindSpore ops) | custom (native kernel)
    kernel: str = "auto"
    # Std of the routers' initial normal weights, drawn from the run's seed when stage 3 converts the dense
    # FFNs (eve_ms/models/evf_convert.py says why not zero); 0: zero routers. How random weights start only:
    # a loaded checkpoint's routers are whatever it holds.
    router_init_std: float = 0.02

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """ConfigErrors name the `evf` key at fault (also for a config changed after it was built)."""
        import math

        from eve_ms.ops.token_allocation import STRATEGIES

        for key, allowed in (("mode", EVF_MODES), ("strategy", STRATEGIES), ("combine", EVF_COMBINES),
                             ("kernel", EVF_KERNELS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"evf.{key} must be one of {tuple(allowed)}, got {getattr(self, key)!r}")
        if isinstance(self.layers, str) and self.layers not in EVF_LAYER_SETS:
            raise ConfigError(f"evf.layers must be one of {list(EVF_LAYER_SETS)} or a list of ints, got {self.layers!r}")
        for key in ("capacity_factor", "eval_capacity_factor"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"evf.{key} must be > 0, got {getattr(self, key)}")
        if self.min_capacity < 0:
            raise ConfigError(f"evf.min_capacity must be >= 0, got {self.min_capacity}")
        if not math.isfinite(self.beta):
            raise ConfigError(f"evf.beta must be finite, got {self.beta}")
        if not 0.0 <= self.redistribute_ratio <= 1.0:
            raise ConfigError(f"evf.redistribute_ratio must be in [0, 1], got {self.redistribute_ratio}")
        if not self.aux_loss_alpha >= 0:
            raise ConfigError(f"evf.aux_loss_alpha must be >= 0, got {self.aux_loss_alpha}")
        if not self.router_init_std >= 0:
            raise ConfigError(f"evf.router_init_std must be >= 0, got {self.router_init_std}")

    def layer_indices(self, num_layers: int) -> list[int]:
        """Indices of the LLM layers whose FFN is an EVF layer."""
        return self.layer_spec_indices(num_layers) if self.enabled else []

    def layer_spec_indices(self, num_layers: int) -> list[int]:
        """The layers `layers` names in an LLM of `num_layers` layers, whether EVF is enabled or not."""
        spec = self.layers
        if isinstance(spec, (list, tuple)):
            bad = [i for i in spec if not isinstance(i, int) or not 0 <= i < num_layers]
            if bad:
                raise ConfigError(f"evf.layers has indices outside 0..{num_layers - 1}: {bad}")
            return sorted(set(spec))
        table = {
            "alternate": list(range(0, num_layers, 2)),
            "all": list(range(num_layers)),
            "first_half": list(range(num_layers // 2)),
            "second_half": list(range(num_layers // 2, num_layers)),
        }
        if spec not in table:
            raise ConfigError(f"evf.layers must be one of {sorted(table)} or a list of ints, got {spec!r}")
        return table[spec]


@dataclass
class EveConfig:
    """The whole model: vision encoder -> adapter -> LLM with EVF layers."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    evf: EVFConfig = field(default_factory=EVFConfig)
    image_token_index: int = IMAGE_TOKEN_INDEX

    def __post_init__(self):
        self.evf.layer_spec_indices(self.llm.num_layers)  # list entries within the LLM's layers
        if self.adapter.type == "ldpv2" and self.adapter.pool_grid is not None \
                and self.adapter.pool_grid > self.vision.grid_size:
            raise ConfigError(f"adapter.pool_grid={self.adapter.pool_grid} must be in 1..{self.vision.grid_size} "
                              "(the encoder's grid)")

    @property
    def num_image_tokens(self) -> int:
        """LLM positions one image occupies after the adapter."""
        return self.adapter.num_output_tokens(self.vision)


# --------------------------------------------------------------------------- yaml io


def _type_ok(value: Any, annotation: Any) -> bool:
    """Loose runtime check of a yaml value against a field annotation."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is Union:
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple) or annotation in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def from_dict(cls, data: Optional[dict], source: str = "<dict>", section: str = ""):
    """Build dataclass `cls` from `data`, strictly: unknown keys and missing required values are errors."""
    where = f"{section} section of {source}" if section else source
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    data = _without_removed_keys(cls, data, where)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown key {key!r} in {where}{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"missing required key {name!r} in {where}")
            continue
        value = data[name]
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            value = from_dict(annotation, value, source, f"{section}.{name}" if section else name)
        elif not _type_ok(value, annotation):
            raise ConfigError(
                f"key {name!r} in {where} has value {value!r} of type {type(value).__name__}, "
                f"expected {annotation}"
            )
        elif annotation is float and isinstance(value, int):
            value = float(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:  # a check across values (__post_init__): say which file and section
        raise ConfigError(f"{where}: {err}") from err


def _without_removed_keys(cls, data: dict, where: str) -> dict:
    """`data` without keys `cls.REMOVED_KEYS` names: dropped when they hold the value that changes
    nothing (files written before the key was removed), an error saying what to do otherwise."""
    removed = getattr(cls, "REMOVED_KEYS", {})
    kept = {}
    for key, value in data.items():
        if key not in removed:
            kept[key] = value
            continue
        harmless, advice = removed[key]
        if value != harmless:
            raise ConfigError(f"key {key!r} in {where} is no longer supported: {advice}")
    return kept


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


MODEL_ARCH = "EveForCausalLM"  # MindFormers' `model.arch.type` of an Eve run yaml
MODEL_SECTION = "model.model_config"  # where a run yaml keeps the EveConfig keys


def model_section(model: Any, source: str) -> dict:
    """The EveConfig keys of a run yaml's `model` section, strictly.

    The one parser of that section (`eve-ms train`, the stages, the planner and `load_eve_config`
    all read it here): MindFormers' layout (`model_config` with the keys, optional `arch.type`,
    which must be EveForCausalLM) or a bare mapping of the keys.
    """
    section = dict(model or {})
    if "model_config" in section:
        arch = (section.get("arch") or {}).get("type", MODEL_ARCH)
        if arch != MODEL_ARCH:
            raise ConfigError(f"model.arch.type must be {MODEL_ARCH}, got {arch!r} in {source}")
        unknown = sorted(set(section) - {"model_config", "arch"})
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in model section of {source}")
        section = dict(section["model_config"] or {})
        section.pop("type", None)  # MindFormers' registry name (EveConfig)
    if not section:
        raise ConfigError(f"{source} has no model section ({MODEL_SECTION} with the EveConfig keys)")
    return section


def run_model_config(model: Any, source: str) -> EveConfig:
    """The `EveConfig` of a run yaml's `model` section (see `model_section`)."""
    return from_dict(EveConfig, model_section(model, source), source, MODEL_SECTION)


BASE_CONFIG_KEY = "base_config"  # MindFormers' yaml inheritance key


def _merge_into(base: dict, override: dict) -> dict:
    """`override` merged into a copy of `base`, recursively for mappings (MindFormers' `_merge_a_into_b`)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_into(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | os.PathLike, _chain: tuple = ()) -> dict:
    """The top-level mapping of a yaml file, with MindFormers' `base_config` resolved.

    As in `mindformers.tools.register.MindFormerConfig`: `base_config` names one file or a list
    of files, relative to this file's folder; the bases are read (recursively) and combined
    section by section, a later base replacing an earlier one's top-level section, and this
    file's own keys are then merged into the result, mappings key by key.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    if os.path.realpath(path) in _chain:
        raise ConfigError(f"{path}: base_config forms a cycle ({' -> '.join(_chain)} -> {os.path.realpath(path)})")
    with open(path, encoding="utf-8") as fh:
        try:
            raw = yaml.safe_load(fh)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid yaml: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    if BASE_CONFIG_KEY not in raw:
        return raw
    bases = raw.pop(BASE_CONFIG_KEY)
    bases = bases if isinstance(bases, list) else [bases]
    if not bases or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: {BASE_CONFIG_KEY} must be a file name or a list of file names, got {bases!r}")
    combined: dict = {}
    for base in bases:
        combined.update(read_yaml(os.path.join(os.path.dirname(path), base), _chain + (os.path.realpath(path),)))
    return _merge_into(combined, raw)


def load_eve_config(path: str | os.PathLike) -> EveConfig:
    """Load an `EveConfig` from a bare model yaml or a MindFormers-style run yaml."""
    path = os.fspath(path)
    raw = read_yaml(path)
    if "model" in raw:  # a run yaml
        return run_model_config(raw["model"], path)
    return from_dict(EveConfig, raw, path)


def save_eve_config(config: EveConfig, path: str | os.PathLike) -> None:
    """Write the config as a bare model yaml, atomically."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(to_dict(config), fh, sort_keys=False)
    os.replace(tmp, path)
