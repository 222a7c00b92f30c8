"""Kernel selection (``learner/kernels.py``): the attention and expert kernels are set explicitly and
logged; a forward whose tensors grouped_mm cannot take runs transformers' per-expert loop, gives the
same output, and says so once, with the reason."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers.integrations import moe

from kimivl import KimiVLForConditionalGeneration
from learner import kernels, qkclip
from learner.kernels import EXPERTS, LOOP, kernels_ran, pin_kernels
from learner.packing import PACKED_ATTENTION


@pytest.fixture
def model(tiny_dir, monkeypatch):
    monkeypatch.setattr(kernels, "_ran", {})  # what this process noted before does not count
    return KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()


def forward(model) -> torch.Tensor:
    ids = torch.arange(10, 74).reshape(2, 32)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(
    "device, packed, qk_clip, flash, attention",
    [
        ("cpu", False, False, False, "sdpa"),
        ("cpu", True, False, False, PACKED_ATTENTION),
        ("cpu", True, True, False, qkclip.ATTENTION),
        ("cuda", True, False, False, PACKED_ATTENTION),  # flash-attn not installed
        ("cuda", True, False, True, "flash_attention_2"),
        ("cuda", False, True, True, qkclip.ATTENTION),  # QK-clip must see every logit
    ],
)
def test_the_kernels_are_set_and_logged(
    model, monkeypatch, caplog, device, packed, qk_clip, flash, attention
):
    monkeypatch.setattr(kernels, "is_flash_attn_2_available", lambda: flash)
    monkeypatch.setattr(kernels, "is_flash_attn_3_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="learner.kernels"):
        chosen = pin_kernels(model, device, packed=packed, qk_clip=qk_clip)
    text = model.language_model.config
    assert (text._attn_implementation, text._experts_implementation) == (attention, EXPERTS)
    assert chosen["attention"] == attention and chosen["experts"] == EXPERTS
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("learner kernels:")]
    assert len(said) == 1 and f"attention {attention} (" in said[0] and f"experts {EXPERTS}" in said[0]
    if device == "cuda" and not flash and not qk_clip:
        assert "flash-attn is not installed" in said[0]


def test_grouped_mm_runs_and_gives_the_per_expert_loop(model, caplog):
    model.language_model.config._experts_implementation = "eager"  # transformers' own loop
    loop = forward(model)
    pin_kernels(model, "cpu", packed=False)
    with caplog.at_level(logging.WARNING, logger="learner.kernels"):
        grouped = forward(model)
    assert kernels_ran() == {"grouped_mm": ""}
    assert not caplog.records  # nothing to warn about
    torch.testing.assert_close(grouped, loop, rtol=1e-5, atol=1e-5)


def test_a_fallback_to_the_loop_is_logged_once_with_its_reason(model, monkeypatch, caplog):
    pin_kernels(model, "cpu", packed=False)
    grouped = forward(model)
    # the tensors grouped_mm cannot take, as transformers' _grouped_mm sees them (it then runs its loop)
    monkeypatch.setattr(moe, "_can_use_grouped_mm", lambda *a: False)
    with caplog.at_level(logging.WARNING, logger="learner.kernels"):
        fallen = [forward(model), forward(model)]  # two forwards, each through every MoE layer
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"routed experts run as a {LOOP}, not grouped_mm: ")
    assert "CPU grouped_mm" in warnings[0]  # the reason names what was missing
    assert set(kernels_ran()) == {"grouped_mm", LOOP}
    for out in fallen:
        torch.testing.assert_close(out, grouped, rtol=1e-5, atol=1e-5)
