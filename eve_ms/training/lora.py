"""LoRA from MindFormers on chosen nn.Dense layers, freezing, and merging back into plain nn.Dense.

`apply_lora(network, scope, settings)` runs `mindformers.pet.LoraAdapter.get_pet_model` on the
sub-cell `scope` (e.g. "llm"). MindFormers matches `target_modules` as a regex against each
*child* cell name (`re.match`), replaces matching `nn.Dense` children with mindpet's
`LoRADense` (which keeps the original `weight`/`bias` Parameters and adds
`mindpet_delta_lora_a` [r, in] and `mindpet_delta_lora_b` [out, r], B initialised to zero),
and recurses only into children that do not match. Its LoRADense computes

    y = x W^T + b + scaling * dropout(x) A^T B^T,   scaling = lora_alpha / lora_rank

in the dtype of the replaced layer's weight (so fp32 stays fp32 on CPU). mindpet's dropout (an
`nn.Dropout`) is replaced by `eve_ms.ops.seeded_dropout.SeededDropout` of the same rate, salted
with the layer's place among the LoRA layers: its masks are a function of the run's seed, step
and micro-batch (the trainer keys them), so runs reproduce and resume exactly, which MindSpore's
`nn.Dropout` does not do on CPU (see that module). Both are the identity in eval mode
(`set_train(False)`).

`merge_lora(network)` replaces every LoRADense by an nn.Dense with weight W + scaling * B A
and the same parameter names, so the merged network's output equals the LoRA network's
(eval mode) and its checkpoint has the plain network's names.
"""
from __future__ import annotations

import re

import numpy as np

from eve_ms.training.config import LoraSettings
from eve_ms.mindformers_env import import_mindformers

LORA_A = "mindpet_delta_lora_a"
LORA_B = "mindpet_delta_lora_b"


def _lora_dense_class():
    import_mindformers()
    from mindpet.delta.lora import LoRADense

    return LoRADense


def sub_cell(network, path: str):
    """The cell at dotted `path` under `network` ("" is the network itself)."""
    cell = network
    for part in [p for p in path.split(".") if p]:
        children = dict(cell.name_cells())
        if part not in children:
            raise KeyError(f"no sub-cell {part!r} in {path!r} (children: {sorted(children)})")
        cell = children[part]
    return cell


def _dense_children(scope) -> list[tuple[str, str]]:
    """(relative path, child name) of every nn.Dense under `scope`."""
    from mindspore import nn

    found = []
    for path, cell in scope.cells_and_names():
        if path and isinstance(cell, nn.Dense):
            found.append((path, path.rsplit(".", 1)[-1]))
    return found


def target_regex(scope, target_modules) -> str:
    """The MindFormers `target_modules` regex for a config value (None / list of names / regex)."""
    if isinstance(target_modules, str):
        return target_modules
    names = sorted({name for _, name in _dense_children(scope)})
    if target_modules is not None:
        patterns = [str(p) for p in target_modules]
        chosen = sorted({n for n in names if any(re.fullmatch(p, n) for p in patterns)})
        unused = [p for p in patterns if not any(re.fullmatch(p, n) for n in names)]
        if unused:
            raise ValueError(f"pet_config.target_modules {unused} match no nn.Dense (their names: {names})")
        names = chosen
    if not names:
        raise ValueError("no nn.Dense layer to put LoRA on")
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def apply_lora(network, scope: str, settings: LoraSettings) -> list[str]:
    """Put MindFormers LoRA on the nn.Dense layers under `network.<scope>`; returns the LoRA parameter names.

    Parameter names of the rest of the network are kept; the new ones are
    `<scope>.<path>.mindpet_delta_lora_a/b`. Freezing is left to `freeze_all_but`.
    """
    import_mindformers()
    from mindformers.pet import LoraAdapter
    from mindformers.pet.pet_config import LoraConfig

    root = sub_cell(network, scope)
    old_names = {id(p): p.name for p in network.get_parameters()}
    regex = target_regex(root, settings.target_modules)
    wanted = [path for path, name in _dense_children(root) if re.match(regex, name)]
    config = LoraConfig(
        lora_rank=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=regex,
    )
    LoraAdapter.get_pet_model(root, config)  # replaces children in place; renames root's params

    lora_cls = _lora_dense_class()
    lora_cells = [(path, cell) for path, cell in root.cells_and_names() if isinstance(cell, lora_cls)]
    replaced = [path for path, _ in lora_cells]
    _seed_dropouts(lora_cells, settings.lora_dropout)
    missed = sorted(set(wanted) - set(replaced))
    if missed:
        raise ValueError(
            f"MindFormers LoRA did not reach {missed}: a parent cell's name also matches {regex!r} "
            "(MindFormers does not look inside a matching cell); name the layers explicitly"
        )
    prefix = f"{scope}." if scope else ""
    lora_names = []
    for rel_name, param in root.parameters_and_names():
        if id(param) in old_names:
            param.name = old_names[id(param)]
        else:
            param.name = prefix + rel_name
            lora_names.append(param.name)
    return lora_names


def _seed_dropouts(lora_cells, rate: float) -> None:
    """Replace each LoRA layer's nn.Dropout by a SeededDropout of the same rate, salted by its index."""
    from eve_ms.ops.seeded_dropout import SeededDropout

    for salt, (_, cell) in enumerate(lora_cells):
        cell.insert_child_to_cell("lora_dropout", SeededDropout(rate, salt=salt))


def lora_settings_of(weights_path: str) -> LoraSettings:
    """The `pet_config` of the run that wrote a weights file (from the config text it stores).

    Stage 3 rebuilds stage 2's LoRA layers with these settings before loading and merging, so
    the merge uses the alpha/rank the LoRA weights were trained with.
    """
    import yaml

    from eve_ms.training.checkpoint import CheckpointError, read_header
    from eve_ms.training.config import train_config_from_dict

    _, metadata, _ = read_header(weights_path)
    if "config_yaml" not in metadata:
        raise CheckpointError(f"{weights_path} does not record the config of the run that wrote it")
    raw = yaml.safe_load(metadata["config_yaml"]) or {}
    return train_config_from_dict(raw, f"config stored in {weights_path}").pet_config


def merged_lora_weight(weight, lora_a, lora_b, scaling: float) -> np.ndarray:
    """W + scaling * B A in float64, returned as float32: the merge formula of `merge_lora` and `merge_lora_tensors`."""
    as64 = lambda x: np.asarray(x, np.float32).astype(np.float64)  # noqa: E731
    return (as64(weight) + scaling * (as64(lora_b) @ as64(lora_a))).astype(np.float32)


def merge_lora_tensors(tensors: dict, settings: LoraSettings, source: str) -> tuple[dict, int]:
    """(tensors, count): a LoRA checkpoint's tensors with every LoRA layer merged into its base weight, as
    `merge_lora` merges the built layers (the same formula, scaling = lora_alpha / lora_rank), so stage 3
    builds its model once, without rebuilding stage 2's LoRA layers. Errors name the tensor and `source`."""
    from eve_ms.training.checkpoint import CheckpointError

    suffix_a, suffix_b = f".{LORA_A}", f".{LORA_B}"
    layers = sorted(name[: -len(suffix_a)] for name in tensors if name.endswith(suffix_a))
    merged = {name: value for name, value in tensors.items() if not name.endswith((suffix_a, suffix_b))}
    for layer in layers:
        lora_a, lora_b = tensors[layer + suffix_a], tensors.get(layer + suffix_b)
        weight = tensors.get(layer + ".weight")
        if lora_b is None or weight is None:
            missing = layer + (suffix_b if lora_b is None else ".weight")
            raise CheckpointError(f"{source} has {layer + suffix_a} but not {missing}")
        if lora_a.shape[0] != settings.lora_rank:
            raise CheckpointError(f"{source}: {layer + suffix_a} has rank {lora_a.shape[0]}, its pet_config says "
                             f"lora_rank {settings.lora_rank}")
        merged[layer + ".weight"] = merged_lora_weight(weight, lora_a, lora_b,
                                                       settings.lora_alpha / settings.lora_rank)
    return merged, len(layers)


def merge_lora(network) -> int:
    """Replace every LoRADense under `network` by an nn.Dense holding W + (alpha/r) B A; returns how many."""
    import mindspore as ms
    from mindspore import nn

    lora_cls = _lora_dense_class()
    targets = [(path, cell) for path, cell in network.cells_and_names() if isinstance(cell, lora_cls)]
    for path, cell in targets:
        merged = merged_lora_weight(*(p.astype(ms.float32).asnumpy() for p in
                                      (cell.weight, getattr(cell, LORA_A), getattr(cell, LORA_B))), cell.scaling)
        dense = nn.Dense(
            cell.in_channels,
            cell.out_channels,
            weight_init=ms.Tensor(merged).astype(cell.weight.dtype),
            bias_init=cell.bias if cell.has_bias else "zeros",
            has_bias=cell.has_bias,
            activation=cell.activation,
            dtype=cell.weight.dtype,
        )
        dense.weight.name = cell.weight.name
        dense.weight.requires_grad = cell.weight.requires_grad
        if cell.has_bias:
            dense.bias = cell.bias  # the same Parameter: name, value and requires_grad kept
        parent_path, _, child = path.rpartition(".")
        sub_cell(network, parent_path).insert_child_to_cell(child, dense)
    return len(targets)
