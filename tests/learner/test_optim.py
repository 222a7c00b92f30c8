"""Which parameters Muon takes, Moonlight's per-matrix scale, and the param groups that carry it."""

from __future__ import annotations

import math

import pytest

from kimivl import KimiVLForConditionalGeneration
from learner.optim import check_groups, muon_param_groups, muon_scale, optimizer_summary, takes_muon


@pytest.fixture(scope="module")
def model(tiny_dir):
    return KimiVLForConditionalGeneration.from_pretrained(str(tiny_dir))


def test_muon_takes_the_matrices_and_adamw_the_embeddings_head_norms_and_biases(model):
    names = {name: takes_muon(name, p.shape) for name, p in model.named_parameters()}
    lm = "language_model.model.layers."
    for name in (
        f"{lm}0.self_attn.q_proj.weight",
        f"{lm}0.self_attn.kv_a_proj_with_mqa.weight",
        f"{lm}0.self_attn.kv_b_proj.weight",
        f"{lm}0.self_attn.o_proj.weight",
        f"{lm}0.mlp.down_proj.weight",
        f"{lm}1.mlp.gate.weight",  # the router
        f"{lm}1.mlp.experts.gate_up_proj",  # (E, 2I, H): per expert
        f"{lm}1.mlp.experts.down_proj",
        f"{lm}1.mlp.shared_experts.up_proj.weight",
        "vision_tower.encoder.blocks.0.wqkv.weight",
        "multi_modal_projector.linear_1.weight",
    ):
        assert names[name] is True, name
    for name in (
        "language_model.model.embed_tokens.weight",
        "language_model.lm_head.weight",
        "vision_tower.patch_embed.proj.weight",  # a 4-D conv: the patch embedding
        "vision_tower.patch_embed.pos_emb.weight",  # 3-D, but an embedding
        f"{lm}0.input_layernorm.weight",
        "vision_tower.encoder.blocks.0.wqkv.bias",
    ):
        assert names[name] is False, name
    counts = optimizer_summary(model)
    assert counts["muon"]["tensors"] == sum(names.values())
    total = sum(p.numel() for p in model.parameters())
    assert counts["muon"]["parameters"] + counts["adamw"]["parameters"] == total


def test_moonlights_scale_over_deepspeeds_by_hand():
    # 0.2 * sqrt(max(A, B)) / sqrt(max(1, A / B))
    assert muon_scale((64, 64)) == pytest.approx(0.2 * 8)  # 1.6 / 1
    assert muon_scale((128, 64)) == pytest.approx(0.2 * math.sqrt(128) / math.sqrt(2))  # 2.263 / 1.414
    assert muon_scale((32, 128)) == pytest.approx(0.2 * math.sqrt(128))  # 2.2627, wide: DeepSpeed's is 1
    assert muon_scale((4, 64, 32)) == muon_scale((64, 32))  # a stack of experts: per matrix


def test_one_group_per_shape_with_weight_decay_over_the_scale(model):
    groups, scales = muon_param_groups(model, weight_decay=0.1)
    muon = [g for g in groups if g["name"] != "adam"]
    shapes = {tuple(p.shape[-2:]) for g in muon for p in g["params"]}
    assert len(muon) == len(shapes) == len(scales) - 1
    assert scales["adam-adam-params"] == 1.0  # Moonlight: AdamW's parameters at the matrices' lr
    assert muon_param_groups(model, 0.1, adamw_lr_ratio=0.3)[1]["adam-adam-params"] == 0.3
    for g in muon:
        (shape,) = {tuple(p.shape[-2:]) for p in g["params"]}
        s = scales[f"{g['name']}-muon-params"]
        assert s == pytest.approx(muon_scale(shape)) and g["weight_decay"] == pytest.approx(0.1 / s)
    grouped = sum(len(g["params"]) for g in groups)
    assert grouped == sum(1 for p in model.parameters() if p.requires_grad)
    named = [{"name": n} for n in scales]
    check_groups(named, scales)
    with pytest.raises(RuntimeError, match="did not plan"):
        check_groups([*named, {"name": "muon64x64-adam-params"}], scales)
