"""Learner model on CUDA: fp32 matches CPU, bf16 trains (forward + backward, finite grads)."""

from __future__ import annotations

import pytest
import torch

from kimivl import KimiVLForConditionalGeneration, KimiVLProcessor
from tests.helpers import gradient_image

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def batch(tiny_dir):
    processor = KimiVLProcessor.from_pretrained(tiny_dir)
    images = [gradient_image(100, 60, 1), gradient_image(30, 200, 2)]
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "hi"}]}],
        add_generation_prompt=True,
    )
    return dict(processor(text=text + "◁think▷ 2+2=4 ◁/think▷ 4", images=images, return_tensors="pt"))


def test_cuda_fp32_matches_cpu(tiny_dir, batch, monkeypatch):
    # cuDNN convolutions (MoonViT's patch embedding) default to TF32 on Hopper: ~1e-3 off in fp32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    gpu = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        ref = cpu(**batch).logits.log_softmax(-1)
        out = gpu(**{k: v.cuda() for k, v in batch.items()}).logits.log_softmax(-1).cpu()
    assert (ref - out).abs().max().item() < 1e-4


def test_cuda_bf16_forward_backward(tiny_dir, batch):
    model = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.bfloat16).cuda().train()
    inputs = {k: v.cuda() for k, v in batch.items()}
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(out.loss) and grads and all(torch.isfinite(g).all() for g in grads)
    vision_grad = model.vision_tower.encoder.blocks[0].wqkv.weight.grad
    assert vision_grad is not None and vision_grad.abs().sum() > 0  # gradients reach MoonViT
