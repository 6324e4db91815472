"""The planner's parameter counts (formulas on the config) against instantiated models and the paper's 1.8B."""
import os

import numpy as np
import pytest

from eve_ms.config import load_eve_config
from eve_ms.plan.inventory import param_counts
from eve_ms.plan.memory import trainable_params
from eve_ms.plan.stage import stage_spec
from eve_ms.training.config import load_train_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER = os.path.join(REPO, "yaml_configs", "eve_siglip_pangu1.5b")
TINY = os.path.join(REPO, "yaml_configs", "tiny")


def _count(network, prefix="", predicate=lambda p: True) -> int:
    return sum(int(np.prod(p.shape)) for p in network.get_parameters()
               if p.name.startswith(prefix) and predicate(p))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_counts_by_part_and_trainable_equal_the_instantiated_tiny_model(stage):
    from eve_ms.models.eve import EveForCausalLM
    from eve_ms.training.lora import apply_lora
    from eve_ms.training.stages import LORA_SCOPE, lora_targets
    from eve_ms.training.trainable import freeze_all_but, trainable_globs

    config = load_train_config(os.path.join(TINY, f"stage{stage}.yaml"))
    spec = stage_spec(config)
    model = EveForCausalLM(spec.model)
    counts = param_counts(spec.model)
    assert counts["vision"] == _count(model, "vision_tower.")
    assert counts["adapter"] == _count(model, "adapter.")
    assert counts["llm"] + counts["evf_extra"] == _count(model, "llm.")
    assert counts["total"] == _count(model)
    vision_ffns = _count(model, predicate=lambda p: ".vision_ffn." in p.name)
    assert counts["activated"] == counts["total"] - vision_ffns
    assert (counts["evf_extra"] > 0) == (stage == 3)

    # what the stage trains, frozen as eve_ms.training.stages freezes it (the table of eve_ms.training.trainable)
    if stage == 2:
        apply_lora(model, LORA_SCOPE, lora_targets(model, config.pet_config))
    freeze_all_but(model, trainable_globs(stage, spec.model.evf.mode))
    assert trainable_params(spec) == _count(model, predicate=lambda p: p.requires_grad)


def test_paper_config_counts_the_papers_1_8b():
    config = load_eve_config(os.path.join(PAPER, "stage3.yaml"))
    counts = param_counts(config)
    from eve_ms.models.eve import param_counts as model_param_counts

    assert counts == model_param_counts(config)  # the models' own formula functions (eve_ms.models.*)
    assert round(counts["activated"] / 1e9, 1) == 1.8  # paper: Eve-1.8B
    assert round(counts["llm"] / 1e9, 2) == 1.50  # PanGu-pi-1.5B
    assert round(counts["vision"] / 1e6) == 304  # SigLIP-L/16-384
    trainable = trainable_params(stage_spec(load_train_config(os.path.join(PAPER, "stage3.yaml"), "Ascend")))
    assert trainable == counts["evf_extra"]  # stage 3 trains the vision FFNs and routers, nothing else
