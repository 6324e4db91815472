"""Original Eve / MoE-LLaVA checkpoints -> eve-ms: outputs match PyTorch references within 1e-4.

The source is built here in MoE-LLaVA's layout and saved with torch.save: a tiny Llama whose
layer 0 is a DeepSpeed MoE layer (expert 0 = the Llama's own MLP, expert 1 another MLP, gate
`wg`), a CLIP tower under `model.image_tower.image_tower.` and an mlp2x_gelu projector under
`model.mm_projector.image_spatial_proj.`; its config routes top-1 with capacity factor 1.5 and
evaluation capacity factor 2.0 (MoE-LLaVA's training-script default). References: the Llama with
expert 0 as its MLP (language-only path), and the same Llama with DeepSpeed's top-1 MoE layer in
layer 0 (`DeepSpeedTop1`), fed the CLIP features through the projector or text alone: the
converted model, with the converter's defaults, must compute that function.
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mindspore import Tensor
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaMLP

from eve_ms.checkpoint_dir import load_eve_checkpoint
from eve_ms.cli import main
from eve_ms.config import IMAGE_TOKEN_INDEX, ConfigError
from eve_ms.convert.moe_llava import convert_moe_llava, export_moe_llava_state_dict, read_source_config
from eve_ms.convert.weights import CheckpointError
from tiny_sources import llama_logits, order_one, pixels, tiny_llama, tiny_vit, vit_features

EXPERTS = "model.layers.0.mlp.deepspeed_moe.experts.deepspeed_experts"
GATE = "model.layers.0.mlp.deepspeed_moe.gate.wg.weight"
MOE = dict(moe_enable=True, moe_layers_idx=[0], num_experts=[2], top_k_experts=1, capacity_factor=1.5,
           eval_capacity_factor=2.0, min_capacity=0, use_residual=False)


def deepspeed_capacity(num_tokens, factor, min_capacity):
    """DeepSpeed's `_capacity`: ceil(T / E * factor) in float32, at least min_capacity (two experts)."""
    capacity = int(torch.ceil((num_tokens / 2) * torch.tensor(factor)).item())
    return max(capacity, min_capacity)


class DeepSpeedTop1(torch.nn.Module):
    """DeepSpeed's top-1 MoE layer on one device, as `sharded_moe.top1gating` and `MOELayer` define it: float32
    softmax gate, each token to its argmax expert (ties: expert 0), capacity per expert from the training or the
    evaluation factor, a random choice of an over-full expert's tokens (random token selection), and each kept
    token's output = its gate probability x its expert's output; dropped tokens give zero."""

    def __init__(self, wg, experts, capacity_factor, eval_capacity_factor, min_capacity):
        super().__init__()
        self.wg, self.experts = wg, torch.nn.ModuleList(experts)
        self.factors = (capacity_factor, eval_capacity_factor)
        self.min_capacity = min_capacity
        self.kept, self.gate_weight = [], True

    def forward(self, x):
        tokens = x.reshape(-1, x.shape[-1])
        gates = torch.softmax(tokens.float() @ self.wg.float().T, dim=1)
        capacity = deepspeed_capacity(len(tokens), self.factors[0 if self.training else 1], self.min_capacity)
        mask = F.one_hot(gates.argmax(1), 2)
        chosen = torch.topk(mask * torch.rand(mask.shape), k=capacity, dim=0).indices
        mask = mask * torch.zeros_like(mask).scatter_(0, chosen, 1)
        self.kept.append(mask.sum(0))
        weights = mask * gates if self.gate_weight else mask.float()
        out = sum(weights[:, e:e + 1] * expert(tokens) for e, expert in enumerate(self.experts))
        return out.reshape(x.shape).to(x.dtype)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_llava")
    llama, clip = tiny_llama(seed=3), tiny_vit("clip", seed=4)
    vision_dir = root / "clip"
    clip.save_pretrained(vision_dir)
    torch.manual_seed(5)
    projector = order_one(torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 32)), 6)
    vision_expert = order_one(LlamaMLP(llama.config), 7)
    wg = torch.randn(2, 32, generator=torch.Generator().manual_seed(8))

    state = {}
    for name, value in llama.state_dict().items():
        if name.startswith("model.layers.0.mlp."):
            state[f"{EXPERTS}.0.{name[len('model.layers.0.mlp.'):]}"] = value.clone()
        else:
            state[name] = value.clone()
    for name, value in vision_expert.state_dict().items():
        state[f"{EXPERTS}.1.{name}"] = value.clone()
    state[GATE] = wg.clone()
    state.update({f"model.image_tower.image_tower.{k}": v.clone() for k, v in clip.state_dict().items()})
    state.update({f"model.mm_projector.image_spatial_proj.{k}": v.clone() for k, v in projector.state_dict().items()})

    src = root / "source"
    src.mkdir()
    config = llama.config.to_dict()
    config.update(model_type="moe_llava_llama", image_projector_type="mlp2x_gelu", mm_hidden_size=16,
                  mm_vision_select_layer=-2, mm_image_tower="openai/clip-vit-large-patch14-336", moe=dict(MOE))
    (src / "config.json").write_text(json.dumps(config))
    torch.save(state, src / "pytorch_model.bin")

    out = root / "converted"
    argv = ["convert", "moe-llava", "--src", str(src), "--vision", str(vision_dir), "--out", str(out)]
    assert main(argv) == 0  # the converter's defaults: the source's function
    model, eve_config, _ = load_eve_checkpoint(str(out))
    return dict(root=root, src=src, vision_dir=vision_dir, out=out, state=state, llama=llama, clip=clip,
                projector=projector, vision_expert=vision_expert, wg=wg, model=model, config=eve_config)


def test_config_places_the_evf_layers_and_the_adapter_and_keeps_the_sources_routing(source):
    config = source["config"]
    assert config.evf.enabled and config.evf.layer_indices(2) == [0]
    assert config.adapter.type == "mlp2x_gelu" and config.vision.backbone == "clip" and config.num_image_tokens == 4
    # top-1 MoE on every token, gate-probability combine, no modality prior, the source's factors
    evf = config.evf
    assert (evf.mode, evf.combine, evf.strategy) == ("moe", "prob", "gbpr")
    assert (evf.capacity_factor, evf.eval_capacity_factor, evf.min_capacity) == (1.5, 2.0, 0)


@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
def test_capacity_is_deepspeeds_for_the_training_and_the_evaluation_factor(source, training):
    layer = source["model"].llm.model.layers[0].mlp
    layer.set_train(training)
    try:
        factor = MOE["capacity_factor"] if training else MOE["eval_capacity_factor"]
        for num_tokens in range(1, 200):
            assert layer.capacity(num_tokens) == deepspeed_capacity(num_tokens, factor, MOE["min_capacity"])
    finally:
        layer.set_train(False)


def test_language_only_path_equals_the_llama_with_expert_zero(source):
    model = source["model"]
    ids = np.random.default_rng(0).integers(3, 300, (2, 7)).astype(np.int32)
    model.set_evf_mode("language_only")
    try:
        logits = model.forward(Tensor(ids))[0].asnumpy()
    finally:
        model.set_evf_mode("moe")
    np.testing.assert_allclose(logits, llama_logits(source["llama"], ids), atol=1e-4)


def _with_deepspeed_moe(source, run, gate_weight=True):
    """run(llama) with layer 0's MLP replaced by DeepSpeed's top-1 MoE in evaluation mode; (result, layer)."""
    llama = source["llama"]
    original = llama.model.layers[0].mlp
    moe = DeepSpeedTop1(source["wg"], [original, source["vision_expert"]], MOE["capacity_factor"],
                        MOE["eval_capacity_factor"], MOE["min_capacity"]).eval()
    moe.gate_weight = gate_weight
    llama.model.layers[0].mlp = moe
    try:
        with torch.no_grad():
            return run(llama), moe
    finally:
        llama.model.layers[0].mlp = original


def test_multimodal_path_equals_deepspeeds_top1_moe_fed_the_projected_clip_features(source):
    model, llama = source["model"], source["llama"]
    ids = np.array([[1, 17, 33] + [IMAGE_TOKEN_INDEX] * 4 + [45, 60, 71, 9]], np.int64)
    image = pixels(2)
    with torch.no_grad():
        features = source["projector"](vit_features(source["clip"], image))
        text = torch.tensor(np.where(ids == IMAGE_TOKEN_INDEX, 0, ids))
        embeds = llama.model.embed_tokens(text)
        embeds[torch.tensor(ids == IMAGE_TOKEN_INDEX)] = features.reshape(-1, 32)
    expected, moe = _with_deepspeed_moe(source, lambda m: llama_logits(m, None, inputs_embeds=embeds))
    assert moe.kept[0].tolist()[0] > 0 and moe.kept[0].tolist()[1] > 0  # both experts run: the check covers both
    assert int(moe.kept[0].sum()) == ids.size  # the evaluation capacity keeps every token
    logits = model.forward(Tensor(ids.astype(np.int32)), pixel_values=Tensor(image))[0].asnumpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    unweighted, _ = _with_deepspeed_moe(source, lambda m: llama_logits(m, None, inputs_embeds=embeds), False)
    assert np.abs(unweighted - expected).max() > 1e-2  # the gate-probability combine is what makes them agree


def test_text_only_input_takes_the_moe_as_in_the_source(source):
    """DeepSpeed routes every token through its gate; a text-only prompt must not switch to the language path."""
    from eve_ms.inference.generate import Generator

    model = source["model"]
    ids = np.random.default_rng(2).integers(3, 300, (2, 9))
    expected, moe = _with_deepspeed_moe(source, lambda m: llama_logits(m, ids))
    assert min(moe.kept[0].tolist()) > 0
    np.testing.assert_allclose(model.forward(Tensor(ids.astype(np.int32)))[0].asnumpy(), expected, atol=1e-4)
    assert Generator(model).evf_mode_for(has_image=False) == "moe"


def test_source_without_eval_capacity_factor_gets_deepspeeds_default_with_a_note(source, tmp_path):
    moe = dict(MOE)
    del moe["eval_capacity_factor"]
    src = _rewrite(source, tmp_path, moe_change=None, moe=moe)
    layout = read_source_config(src)
    assert layout.eval_capacity_factor == 1.0 and any("eval_capacity_factor" in n for n in layout.notes)


def test_routing_options_give_eves_evf_instead(source, tmp_path):
    out = tmp_path / "eve_style"
    argv = ["convert", "moe-llava", "--src", str(source["src"]), "--vision", str(source["vision_dir"]),
            "--out", str(out), "--evf-mode", "multimodal", "--strategy", "img_gbpr", "--combine", "unit",
            "--eval-capacity-factor", "3.0"]
    assert main(argv) == 0
    _, config, _ = load_eve_checkpoint(str(out), load_tokenizer=False)
    evf = config.evf
    assert (evf.mode, evf.strategy, evf.combine, evf.eval_capacity_factor) == ("multimodal", "img_gbpr", "unit", 3.0)


def test_export_to_hugging_face_llama_is_the_language_only_model(source, tmp_path):
    out = tmp_path / "hf"
    assert main(["convert", "to-hf-llm", "--src", str(source["out"]), "--out", str(out)]) == 0
    exported = LlamaForCausalLM.from_pretrained(out).eval()
    ids = np.random.default_rng(1).integers(3, 300, (1, 9))
    np.testing.assert_allclose(llama_logits(exported, ids), llama_logits(source["llama"], ids), atol=1e-4)


def test_original_names_come_back_exactly(source):
    exported = export_moe_llava_state_dict(source["model"])
    state = {name: value.numpy() for name, value in source["state"].items()}
    tower = "model.image_tower.image_tower."
    assert {n for n in state if not n.startswith(tower)} == {n for n in exported if not n.startswith(tower)}
    for name, value in exported.items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)


def _rewrite(source, tmp_path, state_change=None, moe_change=None, moe=None):
    src = tmp_path / "changed"
    src.mkdir()
    config = json.loads((source["src"] / "config.json").read_text())
    config["moe"] = dict(moe) if moe is not None else config["moe"]
    config["moe"].update(moe_change or {})
    (src / "config.json").write_text(json.dumps(config))
    state = dict(source["state"])
    state.update(state_change or {})
    torch.save(state, src / "pytorch_model.bin")
    return str(src)


def test_tensors_the_model_has_no_place_for_are_named(source, tmp_path):
    # a second gate belongs to PanGu-pi Pro's layers, which a Llama source does not have
    src = _rewrite(source, tmp_path, {"model.layers.1.mlp.gate_proj2.weight": torch.zeros(48, 32)})
    with pytest.raises(CheckpointError, match=r"no place for: 'model\.layers\.1\.mlp\.gate_proj2\.weight'"):
        convert_moe_llava(src, None, str(source["vision_dir"]))


def test_more_than_two_experts_is_a_config_error(source, tmp_path, capsys):
    src = _rewrite(source, tmp_path, moe_change={"num_experts": [4]})
    with pytest.raises(ConfigError, match="exactly 2 experts"):
        convert_moe_llava(src, None, str(source["vision_dir"]))
    assert main(["convert", "moe-llava", "--src", src, "--vision", str(source["vision_dir"]),
                 "--out", str(tmp_path / "x")]) == 2
    assert "exactly 2 experts" in capsys.readouterr().err


def test_missing_expert_tensor_is_named(source, tmp_path):
    src = _rewrite(source, tmp_path)
    state = dict(source["state"])
    del state[f"{EXPERTS}.1.down_proj.weight"]
    torch.save(state, f"{src}/pytorch_model.bin")
    with pytest.raises(CheckpointError, match="deepspeed_experts.1.down_proj.weight"):
        convert_moe_llava(src, None, str(source["vision_dir"]))
