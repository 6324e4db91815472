"""The yaml files under yaml_configs/: MindFormers-loadable, strictly loadable, and the paper's Table 2 numbers."""
import glob
import os
import re

import pytest
import yaml

from eve_ms.config import ConfigError, load_eve_config, read_yaml
from eve_ms.training import stages
from eve_ms.training.config import load_train_config, train_config_from_dict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA_RECIPES = os.path.join(REPO, "yaml_configs", "data")  # `eve-ms data mix` recipes, not run configs (tests/data)
YAMLS = sorted(p for p in glob.glob(os.path.join(REPO, "yaml_configs", "**", "*.yaml"), recursive=True)
               if not p.startswith(DATA_RECIPES + os.sep))
PAPER = os.path.join(REPO, "yaml_configs", "eve_siglip_pangu1.5b")
TINY = os.path.join(REPO, "yaml_configs", "tiny")
PAPER_WORLD_SIZE = 8  # the paper's 8 x V100; the paper yamls pin parallel_config.data_parallel to it
# Paper Table 2 (the training hyperparameters of the three stages)
_COMMON = {"schedule": "cosine", "warmup_ratio": 0.03, "weight_decay": 0.0, "optimizer": "AdamW",
           "betas": [0.9, 0.95], "epochs": 1, "image_size": 384}
TABLE2 = {
    "stage1": {**_COMMON, "lr": 1e-3, "global_batch": 256},
    "stage2": {**_COMMON, "lr": 2e-5, "global_batch": 128},
    "stage3": {**_COMMON, "lr": 2e-5, "global_batch": 128, "ffn_capacity": 1.5, "aux_loss_alpha": 0.001},
}


def _name(path):
    return os.path.relpath(path, REPO)


def _subset_mismatches(ours, theirs, path=""):
    """Where MindFormers' value differs from ours (it may add keys of its own, never change ours)."""
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            return [path]
        return [m for key, value in ours.items() for m in _subset_mismatches(value, theirs.get(key, "<absent>"),
                                                                              f"{path}.{key}")]
    return [] if ours == theirs else [path]


@pytest.fixture(autouse=True)
def device_with_bfloat16(monkeypatch):
    """The paper yamls train in bfloat16, a config error on CPU: they load for a device that has it."""
    monkeypatch.setenv("EVE_DEVICE_TARGET", "Ascend")


def test_there_are_paper_and_tiny_configs_for_every_stage():
    names = {_name(p) for p in YAMLS}
    for stage in (1, 2, 3):
        assert f"yaml_configs/eve_siglip_pangu1.5b/stage{stage}.yaml" in names
        assert f"yaml_configs/tiny/stage{stage}.yaml" in names
    assert "yaml_configs/tiny/stage0_llm.yaml" in names


@pytest.mark.parametrize("path", YAMLS, ids=_name)
def test_every_yaml_loads_with_mindformers_and_strictly_with_ours(path):
    from eve_ms.mindformers_env import import_mindformers

    import_mindformers()
    from mindformers.tools.register import MindFormerConfig

    ours = read_yaml(path)
    assert "base_config" not in ours
    assert _subset_mismatches(ours, MindFormerConfig(path).to_dict()) == []
    config = load_train_config(path)
    eve = config.task_sections.model
    strict_model = load_eve_config(path)  # the bare EveConfig loader reads the same model section
    assert (strict_model.vision, strict_model.adapter, strict_model.llm) == (eve.vision, eve.adapter, eve.llm)
    # the text stored with every checkpoint is self-contained and loads to the same config
    stored = yaml.safe_load(config.yaml_text)
    assert "base_config" not in stored and train_config_from_dict(stored, "stored") == config


def test_model_classes_build_by_their_mindformers_type_names():
    from mindformers.tools.register import MindFormerModuleType, MindFormerRegister

    from eve_ms.config import EveConfig
    from eve_ms.models.eve import EveForCausalLM

    raw = read_yaml(os.path.join(TINY, "stage1.yaml"))["model"]
    assert MindFormerRegister.get_cls(MindFormerModuleType.MODELS, raw["arch"]["type"]) is EveForCausalLM
    assert MindFormerRegister.get_cls(MindFormerModuleType.CONFIG, raw["model_config"]["type"]) is EveConfig


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_paper_configs_have_table2_hyperparameters(stage):
    table = TABLE2[f"stage{stage}"]
    config = load_train_config(os.path.join(PAPER, f"stage{stage}.yaml"))
    assert config.stage == stage
    assert config.lr_schedule.type == "CosineWithWarmUpLR" and table["schedule"] == "cosine"
    assert config.lr_schedule.learning_rate == table["lr"]
    assert config.lr_schedule.warmup_ratio == table["warmup_ratio"]
    assert config.optimizer.type == table["optimizer"]
    assert config.optimizer.betas == table["betas"]
    assert config.optimizer.weight_decay == table["weight_decay"]
    assert config.runner_config.epochs == table["epochs"]
    assert config.parallel_config.data_parallel == PAPER_WORLD_SIZE
    assert config.global_batch_size(PAPER_WORLD_SIZE) == table["global_batch"]
    eve = stages.model_config(config)
    assert eve.vision.image_size == table["image_size"]
    assert eve.evf.capacity_factor == TABLE2["stage3"]["ffn_capacity"]
    assert eve.evf.aux_loss_alpha == TABLE2["stage3"]["aux_loss_alpha"]
    assert eve.evf.enabled == (stage == 3)
    assert stages.data_config(config, eve).template == ("plain" if stage == 1 else "v1")


def test_paper_model_is_eve_1_8b():
    eve = stages.model_config(load_train_config(os.path.join(PAPER, "stage3.yaml")))
    assert (eve.vision.backbone, eve.vision.num_tokens, eve.adapter.type, eve.num_image_tokens) == ("siglip", 576,
                                                                                                     "ldp", 144)
    assert (eve.llm.num_layers, eve.llm.hidden_size, eve.llm.vocab_size) == (22, 2048, 48000)
    assert eve.evf.layer_indices(eve.llm.num_layers) == list(range(0, 22, 2))
    from eve_ms.models.eve import param_counts

    counts = param_counts(eve)
    assert abs(counts["activated"] - 1.8e9) <= 0.1 * 1.8e9, counts


def test_moe_ablation_configs_train_the_x2top1_baseline():
    from eve_ms.training.trainable import MOE_ALSO_TRAINS, trainable_globs

    for path in (os.path.join(TINY, "stage3_moe.yaml"), os.path.join(PAPER, "stage3_moe_x2top1.yaml")):
        mode = load_train_config(path).task_sections.model.evf.mode
        assert mode == "moe" and set(MOE_ALSO_TRAINS) <= set(trainable_globs(3, mode))
    assert not set(MOE_ALSO_TRAINS) & set(trainable_globs(3, "multimodal"))


@pytest.mark.parametrize("options,rename", [
    ({"moe": True}, "write model.model_config.evf.mode: moe instead of task_options.moe"),
    ({"router_init_std": 0.5}, "write it as model.model_config.evf.router_init_std"),
])
def test_task_options_moved_to_the_model_config_fail_saying_what_to_write(tmp_path, options, rename):
    with pytest.raises(ConfigError, match=rename):
        _tiny_with(tmp_path, "stage3.yaml", task_options=options)
    # an old yaml holding the value that changes nothing still loads
    harmless = {key: {"moe": False, "router_init_std": 0.02}[key] for key in options}
    assert _tiny_with(tmp_path, "stage3.yaml", task_options=harmless).task_sections.model.evf.mode == "multimodal"


def test_base_config_merges_like_mindformers(tmp_path):
    (tmp_path / "base.yaml").write_text("a: {x: 1, y: 2}\nb: [1, 2]\nc: 3\n")
    (tmp_path / "other.yaml").write_text("a: {z: 9}\n")
    (tmp_path / "child.yaml").write_text("base_config: base.yaml\na: {y: 5}\nb: [7]\n")
    (tmp_path / "two.yaml").write_text("base_config: [base.yaml, other.yaml]\nc: 4\n")
    assert read_yaml(tmp_path / "child.yaml") == {"a": {"x": 1, "y": 5}, "b": [7], "c": 3}
    # several bases: a later base replaces an earlier one's section (MindFormers' dict.update)
    assert read_yaml(tmp_path / "two.yaml") == {"a": {"z": 9}, "b": [1, 2], "c": 4}
    (tmp_path / "loop_a.yaml").write_text("base_config: loop_b.yaml\n")
    (tmp_path / "loop_b.yaml").write_text("base_config: loop_a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        read_yaml(tmp_path / "loop_a.yaml")
    (tmp_path / "lost.yaml").write_text("base_config: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        read_yaml(tmp_path / "lost.yaml")


def _tiny_with(tmp_path, stage_file, **sections):
    raw = {"base_config": os.path.join(TINY, stage_file), **sections}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_train_config(path)


@pytest.mark.parametrize(
    "stage_file,sections,message",
    [
        ("stage1.yaml", {"model": {"model_config": {"evf": {"enabled": True}}}}, "stage 1 trains a dense LLM"),
        ("stage3.yaml", {"model": {"model_config": {"evf": {"enabled": False}}}}, "stage 3 needs"),
        ("stage3.yaml", {"model": {"model_config": {"evf": {"mode": "language_only"}}}}, "language_only"),
        ("stage2.yaml", {"task_options": {"tokenizer_vocab": 5}},
         r"unknown key 'tokenizer_vocab' in task_options.*did you mean 'tokenizer_vocab_size'"),
        ("stage3.yaml", {"model": {"model_config": {"evf": {"router_init_std": -0.1}}}}, "evf.router_init_std must be >= 0"),
        ("stage2.yaml", {"model": {"arch": {"type": "LlamaForCausalLM"}}}, "model.arch.type must be EveForCausalLM"),
        ("stage2.yaml", {"model": {"model_config": {"llm": {"hidden_sise": 8}}}}, "unknown key 'hidden_sise'"),
        ("stage2.yaml", {"data": {"max_length": 512}}, "exceeds model llm.max_position_embeddings=256"),
    ],
)
def test_bad_stage_sections_are_errors_naming_the_key_when_the_yaml_loads(tmp_path, stage_file, sections, message):
    with pytest.raises(ConfigError, match=message):
        _tiny_with(tmp_path, stage_file, **sections)


def test_missing_load_checkpoint_is_an_error_for_stages_that_initialise_from_one(tmp_path):
    with pytest.raises(ConfigError, match="stage 2 initialises from load_checkpoint"):
        stages.init_weights_file(None, 2)
    assert stages.init_weights_file(None, 0) is None


def test_the_design_doc_lists_what_each_stage_trains_as_the_code_does():
    from eve_ms.training.trainable import MOE_ALSO_TRAINS, TRAINABLE

    with open(os.path.join(REPO, "docs", "design.md"), encoding="utf-8") as fh:
        doc = fh.read()
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines() if re.match(r"^\| [0-3] \|", line)}
    assert sorted(rows) == ["0", "1", "2", "3"]
    for stage, globs in TRAINABLE.items():
        assert re.findall(r"`([^`]+)`", rows[str(stage)].split("evf.mode")[0]) == list(globs), rows[str(stage)]
    assert re.findall(r"`([^`]+)`", rows["3"].split("evf.mode: moe`")[1]) == list(MOE_ALSO_TRAINS)
