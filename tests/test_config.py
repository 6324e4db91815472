"""Configs: strict yaml loading with errors that name the key and file, and parameter counts from the config alone."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from eve_ms.config import (AdapterConfig, ConfigError, EVFConfig, EveConfig, LLMConfig, VisionConfig, from_dict,
                           load_eve_config, save_eve_config)
from eve_ms.data.config import DataConfig


def _write(tmp_path, data, name="model.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_misspelled_key_names_the_key_the_section_and_the_file(tmp_path):
    path = _write(tmp_path, {"llm": {"hiden_size": 64}})
    with pytest.raises(ConfigError) as err:
        load_eve_config(path)
    message = str(err.value)
    assert "'hiden_size'" in message and "llm" in message and path in message
    assert "did you mean 'hidden_size'" in message


def test_wrong_type_is_an_error(tmp_path):
    path = _write(tmp_path, {"evf": {"capacity_factor": "large"}})
    with pytest.raises(ConfigError, match="capacity_factor"):
        load_eve_config(path)


def test_missing_required_value_names_the_key_and_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"missing required key 'data_path' in data section of run\.yaml"):
        from_dict(DataConfig, {"template": "v1"}, "run.yaml", "data")


def test_mindformers_style_run_file_and_round_trip(tmp_path):
    run = {"model": {"model_config": {"type": "EveConfig", "llm": {"hidden_size": 96, "num_heads": 4}},
                     "arch": {"type": "EveForCausalLM"}}}
    config = load_eve_config(_write(tmp_path, run, "run.yaml"))
    assert config.llm.hidden_size == 96 and config.vision.backbone == "siglip"
    save_eve_config(config, tmp_path / "saved.yaml")
    assert load_eve_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize("spec, expected", [
    ("alternate", [0, 2, 4]), ("all", [0, 1, 2, 3, 4, 5]), ("first_half", [0, 1, 2]),
    ("second_half", [3, 4, 5]), ([5, 1], [1, 5]),
])
def test_evf_layer_sets(spec, expected):
    assert EVFConfig(enabled=True, layers=spec).layer_indices(6) == expected
    assert EVFConfig(enabled=False, layers=spec).layer_indices(6) == []


def test_evf_layer_list_out_of_range_is_an_error():
    with pytest.raises(ConfigError, match="outside"):
        EVFConfig(enabled=True, layers=[0, 9]).layer_indices(6)


PAPER_YAML = Path(__file__).resolve().parents[1] / "yaml_configs" / "eve_siglip_pangu1.5b" / "stage3.yaml"


def _tiny(backbone, adapter, evf, tied=False, **llm):
    vision = dict(backbone=backbone, image_size=32, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2)
    if backbone == "resnet":
        vision = dict(backbone="resnet", image_size=64, embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1])
    else:
        vision["patch_size"] = 8
    return EveConfig(
        vision=VisionConfig(**vision), adapter=AdapterConfig(type=adapter),
        llm=LLMConfig(vocab_size=90, hidden_size=32, intermediate_size=40, num_layers=3, num_heads=4, num_kv_heads=2,
                      tie_word_embeddings=tied, max_position_embeddings=64, **llm),
        evf=EVFConfig(enabled=evf),
    )


@pytest.mark.parametrize("backbone, adapter, evf, tied", [
    ("siglip", "ldp", True, False), ("clip", "ldpv2", False, True), ("resnet", "mlp2x_gelu", True, False),
])
def test_param_counts_equal_the_instantiated_model(backbone, adapter, evf, tied):
    from eve_ms.models.eve import EveForCausalLM, eve_param_count, param_counts

    config = _tiny(backbone, adapter, evf, tied)
    counts = param_counts(config)
    model = EveForCausalLM(config)
    assert counts["total"] == eve_param_count(model)
    ffn_and_router = 3 * 32 * 40 + 2 * 32
    evf_layers = 2 if evf else 0  # alternate layers of 3: 0 and 2
    assert counts["evf_extra"] == evf_layers * ffn_and_router
    assert counts["activated"] == counts["total"] - evf_layers * 3 * 32 * 40


def test_param_counts_of_pangu_pi_layers_count_each_vision_ffn_of_its_layers_kind():
    from eve_ms.models.eve import EveForCausalLM, eve_param_count, param_counts

    config = _tiny("siglip", "ldp", True, ffn_below_split="series", attn_shortcut_width=8, layer_split=2,
                   attention_bias=True)
    counts = param_counts(config)
    assert counts["total"] == eve_param_count(EveForCausalLM(config))
    series, swiglu, router = 4 * 32 * 40, 3 * 32 * 40, 2 * 32  # EVF layers 0 (series) and 2 (swiglu)
    assert counts["evf_extra"] == series + swiglu + 2 * router
    assert counts["activated"] == counts["total"] - series - swiglu


def test_paper_configuration_is_the_released_model_at_the_papers_sizes():
    config = load_eve_config(PAPER_YAML)
    llm = config.llm
    assert config.evf.enabled and (llm.num_layers, llm.hidden_size, llm.vocab_size) == (22, 2048, 48000)
    assert [llm.ffn_kind(i) for i in range(22)] == ["series"] * 15 + ["swiglu"] * 7  # the release's split 15
    assert [i for i in range(22) if llm.attn_shortcut_width_of(i)] == list(range(15, 22))
    assert (config.vision.select_layer, config.vision.layers_used) == (-1, 24)  # every block + final norm
    assert config.num_image_tokens == 144  # SigLIP-L 384: 24x24 patches, LDP halves the grid
    from eve_ms.models.eve import param_counts

    counts = param_counts(config)
    assert abs(counts["llm"] - 1.5e9) / 1.5e9 < 0.01  # PanGu-pi-1.5B Pro
    assert abs(counts["activated"] - 1.8e9) / 1.8e9 < 0.03  # the paper's 1.8B
    assert counts["total"] > counts["activated"]  # the vision FFNs of 11 EVF layers


def test_configs_are_plain_dataclasses():
    assert all(dataclasses.is_dataclass(c) for c in (VisionConfig, AdapterConfig, LLMConfig, EVFConfig, EveConfig))


def test_a_model_config_written_before_eval_capacity_factor_loads_with_the_default(tmp_path):
    saved = tmp_path / "model_config.yaml"
    save_eve_config(EveConfig(evf=EVFConfig(enabled=True, capacity_factor=1.25)), saved)
    assert "eval_capacity_factor: 2.0" in saved.read_text()
    old = tmp_path / "old_model_config.yaml"
    old.write_text("".join(line for line in saved.read_text().splitlines(True) if "eval_capacity_factor" not in line))
    config = load_eve_config(old)
    assert config.evf.eval_capacity_factor == 2.0 and config.evf.capacity_factor == 1.25


def test_removed_input_side_shortcut_key_loads_when_empty_and_otherwise_says_what_to_use(tmp_path):
    old = load_eve_config(_write(tmp_path, {"llm": {"augmented_shortcut_layers": []}}, "old.yaml"))
    assert old.llm == LLMConfig()
    path = _write(tmp_path, {"llm": {"augmented_shortcut_layers": [3]}}, "used.yaml")
    with pytest.raises(ConfigError) as err:
        load_eve_config(path)
    message = str(err.value)
    assert "'augmented_shortcut_layers'" in message and path in message
    assert "attn_shortcut_width" in message and "layer_split" in message


def test_layer_layout_errors_surface_when_the_yaml_loads(tmp_path):
    path = _write(tmp_path, {"llm": {"num_layers": 5, "ffn_below_split": "series"}})
    with pytest.raises(ConfigError, match="no split for 5 layers") as err:
        load_eve_config(path)
    assert f"llm section of {path}" in str(err.value)
