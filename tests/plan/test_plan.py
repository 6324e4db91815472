"""`eve-ms plan`: memory parts add up, FLOPs follow a closed form, advice is yaml that loads and fits."""
import json
import os

import pytest
import yaml

from eve_ms.cli import main
from eve_ms.config import ConfigError, _merge_into, read_yaml
from eve_ms.plan.devices import get_device, load_devices
from eve_ms.plan.inventory import llm_denses
from eve_ms.plan.memory import memory_parts
from eve_ms.plan.planner import plan_stage
from eve_ms.plan.stage import stage_spec
from eve_ms.plan.step import StepModel
from eve_ms.training.config import load_train_config, train_config_from_dict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER = os.path.join(REPO, "yaml_configs", "eve_siglip_pangu1.5b")
TINY = os.path.join(REPO, "yaml_configs", "tiny")
PARTS = ("frozen_weights", "trainable_weights", "gradients", "optimizer_state", "activations", "evf_buffers",
         "logits", "working", "framework_reserve")


def _spec(stage, root=PAPER, **changes):
    spec = stage_spec(load_train_config(os.path.join(root, f"stage{stage}.yaml")))
    return spec.with_changes(**changes) if changes else spec


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_memory_parts_add_up_and_follow_the_settings(stage):
    device = get_device("910B")
    spec = _spec(stage, micro_batch=2, grad_accum=8)
    parts = memory_parts(spec, reserve_bytes=device.reserve_bytes)
    assert set(parts) == set(PARTS) | {"total"}
    assert parts["total"] == pytest.approx(sum(parts[k] for k in PARTS), rel=1e-12)
    assert all(parts[k] >= 0 for k in PARTS) and parts["framework_reserve"] == 6e9
    assert (parts["evf_buffers"] > 0) == (stage == 3)
    # gradients: float32 buffers + float32 backward outputs; AdamW: two float32 moments
    assert parts["gradients"] == parts["optimizer_state"] == 2 * parts["trainable_weights"]

    recomputed = memory_parts(spec.with_changes(recompute_layers=22))
    assert recomputed["activations"] < parts["activations"]
    assert {k: recomputed[k] for k in ("frozen_weights", "gradients", "logits")} == {
        k: parts[k] for k in ("frozen_weights", "gradients", "logits")}
    half = memory_parts(spec.with_changes(micro_batch=1, grad_accum=16))
    assert half["activations"] == pytest.approx(parts["activations"] / 2, rel=0.01)
    fused = memory_parts(spec.with_changes(fused_attention=True))
    assert fused["activations"] < parts["activations"] and fused["working"] < parts["working"]


def test_recompute_adds_the_forward_of_the_recomputed_layers():
    spec = _spec(3, micro_batch=2, grad_accum=1)
    plain, all_layers = StepModel(spec), StepModel(spec.with_changes(recompute_layers=22))
    assert plain.recompute_flops == 0
    assert all_layers.forward_flops == plain.forward_flops and all_layers.backward_flops == plain.backward_flops
    decoder_forward = sum(b.forward for b in plain.blocks if b.layer >= 0 and b.backward_runs)
    assert all_layers.recompute_flops == pytest.approx(decoder_forward)
    # stage 3: layer 0's attention has nothing trainable below it, so it is neither differentiated nor recomputed
    assert not [b for b in plain.blocks if b.name == "layer0.attention"][0].backward_runs


def test_flops_of_a_fully_trained_llm_follow_6_n_t_plus_attention():
    """Stage 0 trains every LLM weight: 6 x dense weights x tokens + 12 x layers x B x heads x S^2 x head_dim."""
    spec = stage_spec(load_train_config(os.path.join(TINY, "stage0_llm.yaml")))
    step = StepModel(spec)
    llm = spec.model.llm
    tokens = spec.micro_batch * spec.seq_len
    dense = sum(d.fan_in * d.fan_out for d in llm_denses(spec.model))
    expected = 6 * dense * tokens + 12 * llm.num_layers * spec.micro_batch * llm.num_heads * spec.seq_len**2 \
        * llm.dim_per_head
    decoder = sum(b.forward + b.backward for b in step.blocks if b.layer >= 0 or b.name == "lm_head+loss")
    assert decoder == pytest.approx(expected, rel=1e-12)


def test_a_config_that_cannot_fit_gets_yaml_that_loads_and_fits(tmp_path):
    """Paper stage 3 (16 x 2048 tokens per device) on a V100: the advice, merged into the yaml, fits."""
    device = get_device("V100")
    plan = plan_stage(_spec(3), device, 8)
    assert not plan.fits and plan.advice
    for advice in plan.advice:
        merged = _merge_into(read_yaml(os.path.join(PAPER, "stage3.yaml")), yaml.safe_load(advice.yaml_lines()))
        config = train_config_from_dict(merged, "advised.yaml")  # the keys are real trainer options
        replanned = plan_stage(stage_spec(config), device, 8)
        assert replanned.fits, advice.yaml_lines()
        assert replanned.memory["total"] == pytest.approx(advice.memory_total)
        assert config.global_batch_size(8) == 128  # the paper's global batch is kept
    first = plan.advice[0]
    assert set(yaml.safe_load(first.yaml_lines())) <= {"runner_config", "recompute_config"}


def test_a_fitting_config_gets_no_advice():
    plan = plan_stage(_spec(1, micro_batch=1, grad_accum=32), get_device("910B"), 8)
    assert plan.fits and plan.advice == []


def test_devices_file_has_the_named_devices_with_sources():
    devices, aliases = load_devices()
    assert {"910B", "910B-32G", "V100", "A100-40G", "A100-80G"} <= set(devices)
    for spec in devices.values():
        assert spec.source and 0 < spec.usable_gb < spec.memory_gb and spec.peak_tflops
    assert get_device("A100").key == aliases["A100"]
    assert get_device("V100").compute_dtype("bfloat16") == "float16"
    with pytest.raises(ConfigError, match="unknown device 'H9000'"):
        get_device("H9000")


def test_cli_prints_every_part_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = main(["plan", os.path.join(PAPER, "stage3.yaml"), "--device", "V100", "--samples", "3265280",
                 "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    for label in ("frozen weights", "optimizer state", "EVF expert buffers", "logits", "framework reserve",
                  "DOES NOT FIT", "recompute_config:", "all-reduce", "25510 steps"):
        assert label in text
    (plan,) = json.loads(out.read_text())
    assert plan["stage"] == 3 and plan["num_devices"] == 8 and plan["global_batch"] == 128
    assert plan["time"]["steps"] == 25510 and plan["advice"]


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["plan", os.path.join(PAPER, "stage1.yaml"), "--device", "TPU"]) == 1
    assert "unknown device 'TPU'" in capsys.readouterr().err
    bad = tmp_path / "resnet.yaml"
    bad.write_text(yaml.safe_dump({"stage": 1, "model": {"vision": {"backbone": "resnet"}}}))
    assert main(["plan", str(bad)]) == 1
    assert "vision.backbone 'resnet'" in capsys.readouterr().err
