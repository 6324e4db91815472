"""A whole checkpoint in the Eve release's own layout (`moe_llava_zhizi`) -> eve-ms through `eve-ms convert`.

The source is built here as the release saves a stage-3 Eve: its PanGu-pi Pro LLM (`pangu_reference`,
12 layers split at 8, q/k/v biases) with DeepSpeed MoE layers in the even layers (expert 0 the
layer's own FFN, series below the split and SwiGLU above it; expert 1 another FFN of the same kind;
gate `wg`), an LDP projector under `model.mm_projector.image_spatial_proj.` and the timm-style SigLIP
tower of `vision_tower_type: siglip` under `model.image_tower.` (`timm_siglip_reference`), saved with
torch.save. References: the PanGu-pi Pro reference with expert 0 as its FFNs, and the timm tower.
"""
import json

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor
from safetensors.numpy import load_file

from eve_ms.checkpoint_dir import load_eve_checkpoint
from eve_ms.cli import main
from eve_ms.config import AdapterConfig
from eve_ms.convert.moe_llava import convert_moe_llava, export_moe_llava_state_dict
from eve_ms.convert.weights import CheckpointError
from eve_ms.models.adapter import build_adapter, reference_name
from pangu_reference import MLP, build, logits, tiny_config
from tiny_sources import order_one, pixels, tiny_vit
from timm_siglip_reference import TimmSiglipTower

MOE_LAYERS = [0, 2, 4, 6, 8, 10]
PROJECTOR = "model.mm_projector.image_spatial_proj."


def _experts(i):
    return f"model.layers.{i}.mlp.deepspeed_moe.experts.deepspeed_experts"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release_eve")
    config = tiny_config()
    llm = build(config, seed=31)
    vision_dir = root / "siglip"
    tiny_vit("siglip", seed=32).save_pretrained(vision_dir)  # architecture only (16 wide, 2 layers, 16 px)
    tower = order_one(TimmSiglipTower(image_size=16, patch_size=8, width=16, depth=2, heads=2, inner=32), 33)
    ms.set_seed(34)
    adapter = build_adapter(AdapterConfig(type="ldp"), 16, 32, 2)

    state = {}
    for name, value in llm.state_dict().items():
        layer = name.split(".")[2] if name.startswith("model.layers.") else None
        if layer is not None and int(layer) in MOE_LAYERS and ".mlp." in name:
            state[f"{_experts(layer)}.0.{name.split('.mlp.')[1]}"] = value.clone()
        else:
            state[name] = value.clone()
    for i in MOE_LAYERS:
        vision_expert = order_one(MLP(config, series=i < 8), 40 + i)
        state.update({f"{_experts(i)}.1.{k}": v.clone() for k, v in vision_expert.state_dict().items()})
        state[f"model.layers.{i}.mlp.deepspeed_moe.gate.wg.weight"] = torch.randn(
            2, 32, generator=torch.Generator().manual_seed(60 + i))
    state.update({f"model.image_tower.{k}": v.clone() for k, v in tower.state_dict().items()})
    state.update({PROJECTOR + reference_name("ldp", n): torch.from_numpy(p.asnumpy().copy())
                  for n, p in adapter.parameters_and_names()})

    src = root / "source"
    src.mkdir()
    source_config = dict(config, model_type="moe_llava_zhizi", architectures=["EveLlavaZhiziForCausalLM"],
                         image_projector_type="ldpnet", mm_hidden_size=16, vision_tower_type="siglip",
                         mm_image_tower="/ckpt/siglip_large_patch16_384/pytorch_model.bin",
                         mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                         moe=dict(moe_enable=True, moe_layers_idx=MOE_LAYERS, num_experts=[2] * 6, top_k_experts=1,
                                  capacity_factor=1.5, eval_capacity_factor=1.5, min_capacity=0,
                                  use_residual=False, router_aux_loss_coef=0.01))
    (src / "config.json").write_text(json.dumps(source_config))
    torch.save(state, src / "pytorch_model.bin")

    out = root / "converted"
    assert main(["convert", "moe-llava", "--src", str(src), "--vision", str(vision_dir), "--out", str(out)]) == 0
    model, eve_config, _ = load_eve_checkpoint(str(out))
    return dict(root=root, src=src, vision_dir=vision_dir, out=out, state=state, llm=llm, tower=tower,
                model=model, config=eve_config)


def test_config_is_the_release_model(release):
    config = release["config"]
    llm = config.llm
    assert (llm.split_index, llm.ffn_below_split, llm.ffn_from_split, llm.attn_shortcut_width) == (8, "series",
                                                                                                 "swiglu", 128)
    assert llm.attention_bias and config.evf.layer_indices(12) == MOE_LAYERS
    assert (config.vision.select_layer, config.vision.hidden_act) == (-1, "gelu")  # the release's timm tower
    assert config.adapter.type == "ldp" and config.num_image_tokens == 1
    experts = [release["model"].llm.model.layers[i].mlp for i in MOE_LAYERS]
    assert [(e.language_ffn.kind, e.vision_ffn.kind) for e in experts] == [("series",) * 2] * 4 + [("swiglu",) * 2] * 2


def test_tower_gives_the_release_towers_features(release):
    image = pixels(5, batch=2)
    with torch.no_grad():
        expected = release["tower"](torch.from_numpy(image)).numpy()
    np.testing.assert_allclose(release["model"].vision_tower(Tensor(image)).asnumpy(), expected, atol=1e-5, rtol=0)


def test_language_only_path_equals_the_release_llm_with_expert_zero(release):
    model = release["model"]
    ids = np.random.default_rng(3).integers(3, 96, (2, 8)).astype(np.int32)
    model.set_evf_mode("language_only")
    try:
        out = model.forward(Tensor(ids))[0].asnumpy()
    finally:
        model.set_evf_mode("multimodal")
    np.testing.assert_allclose(out, logits(release["llm"], ids), atol=1e-4, rtol=0)


def test_release_names_come_back_exactly(release):
    exported = export_moe_llava_state_dict(release["model"], projector_prefix=PROJECTOR, timm_siglip_tower=True)
    original = {name: value.numpy() for name, value in release["state"].items()
                if not name.startswith("model.image_tower.attn_pool.")}  # the unused head is not part of the model
    assert set(exported) == set(original)
    for name, value in exported.items():
        np.testing.assert_array_equal(value, original[name], err_msg=name)


def test_llm_exports_in_the_release_layout_with_expert_zero_as_its_ffn(release, tmp_path):
    assert main(["convert", "to-hf-llm", "--src", str(release["out"]), "--out", str(tmp_path)]) == 0
    exported = load_file(tmp_path / "model.safetensors")
    original = {k: v.numpy() for k, v in release["llm"].state_dict().items()}
    assert set(exported) == set(original)
    for name, value in original.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_unknown_tower_tensor_is_named(release, tmp_path):
    src = tmp_path / "changed"
    src.mkdir()
    (src / "config.json").write_text((release["src"] / "config.json").read_text())
    torch.save({**release["state"], "model.image_tower.blocks.0.ls1.gamma": torch.ones(16)}, src / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"timm-style SigLIP tower does not have: \[blocks\.0\.ls1\.gamma\]"):
        convert_moe_llava(str(src), None, str(release["vision_dir"]))
