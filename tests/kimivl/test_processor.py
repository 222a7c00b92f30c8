"""Processor: patching, padding, downscale, normalization, placeholder expansion, chat template."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from kimivl.processing import IMAGE_PLACEHOLDER, KimiVLImageProcessor, KimiVLProcessor
from runkit.tokens import THINK_CLOSE, THINK_OPEN


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return KimiVLProcessor.from_pretrained(tiny_dir)


def test_grid_and_token_count_with_padding():
    ip = KimiVLImageProcessor(in_token_limit=4096)
    out = ip(Image.new("RGB", (100, 60)))
    # 100 x 60 px: 7 * 4 = 28 patches <= 4096, no resize. Pad to multiples of 28: 112 x 84 px
    # -> grid (84/14, 112/14) = (6, 8) -> 48 patches -> 48 / 4 = 12 merged tokens.
    assert out["image_grid_hws"].tolist() == [[6, 8]]
    assert tuple(out["pixel_values"].shape) == (48, 3, 14, 14)
    assert ip.num_image_tokens(100, 60) == 12


def test_downscale_over_token_limit():
    ip = KimiVLImageProcessor(in_token_limit=4096)
    # 2000 x 1000: 142 * 71 = 10082 patches > 4096 -> scale sqrt(4096 / 10082) = 0.637392
    # -> int(1274.78) x int(637.39) = 1274 x 637 -> pad to 1288 x 644 -> grid (46, 92)
    # -> 23 * 46 = 1058 tokens.
    assert ip.num_image_tokens(2000, 1000) == 1058
    assert ip(Image.new("RGB", (2000, 1000)))["image_grid_hws"].tolist() == [[46, 92]]


def test_patch_order_and_normalization():
    img = Image.new("RGB", (28, 28))
    colors = {(0, 0): (255, 0, 0), (14, 0): (0, 255, 0), (0, 14): (0, 0, 255), (14, 14): (255, 255, 255)}
    for (x, y), c in colors.items():
        img.paste(c, (x, y, x + 14, y + 14))
    pv = KimiVLImageProcessor()(img)["pixel_values"]
    # Row-major patches: top-left red, top-right green, bottom-left blue, bottom-right white.
    # Normalization (v / 255 - 0.5) / 0.5 maps 255 -> 1 and 0 -> -1.
    expected = [(1, -1, -1), (-1, 1, -1), (-1, -1, 1), (1, 1, 1)]
    for k, rgb in enumerate(expected):
        assert pv[k].mean(dim=(1, 2)).tolist() == list(map(float, rgb))


def test_padding_is_black_bottom_right():
    pv = KimiVLImageProcessor()(Image.new("RGB", (20, 10), (255, 255, 255)))["pixel_values"]
    # 20 x 10 pads to 28 x 28; patch 0 covers rows 0..13, cols 0..13: white where row < 10.
    assert pv[0, :, :10, :].eq(1).all() and pv[0, :, 10:, :].eq(-1).all()
    assert pv[3].eq(-1).all()  # bottom-right patch is all padding


def test_processor_expands_placeholders_in_image_order(processor):
    images = [Image.new("RGB", (56, 28)), Image.new("RGB", (28, 84))]
    text = f"{IMAGE_PLACEHOLDER} and {IMAGE_PLACEHOLDER} ?"
    enc = processor(text=text, images=images, return_tensors="pt")
    pad_id = processor.tokenizer.convert_tokens_to_ids("<|media_pad|>")
    ids = enc["input_ids"][0].tolist()
    # 56 x 28 -> grid (2, 4) -> 2 tokens; 28 x 84 -> grid (6, 2) -> 3 tokens.
    runs, count = [], 0
    for t in [*ids, -1]:
        if t == pad_id:
            count += 1
        elif count:
            runs.append(count)
            count = 0
    assert runs == [2, 3]
    assert enc["image_grid_hws"].tolist() == [[2, 4], [6, 2]]


def test_chat_template_and_special_tokens(processor):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},
        {"role": "assistant", "content": f"{THINK_OPEN}two{THINK_CLOSE}2"},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=False)
    assert text == (
        "<|im_user|>user<|im_middle|><|media_start|>image<|media_content|><|media_pad|><|media_end|>"
        f"How many?<|im_end|><|im_assistant|>assistant<|im_middle|>{THINK_OPEN}two{THINK_CLOSE}2<|im_end|>"
    )
    prompt = processor.apply_chat_template(messages[:1], add_generation_prompt=True)
    assert prompt.endswith("<|im_assistant|>assistant<|im_middle|>")
    tok = processor.tokenizer
    for special in ["<|im_user|>", "<|im_middle|>", "<|im_end|>", "<|media_pad|>", THINK_OPEN, THINK_CLOSE]:
        assert len(tok.encode(special, add_special_tokens=False)) == 1, special
    # thinking markers survive decoding (they are not special tokens)
    ids = tok.encode(f"{THINK_OPEN}x{THINK_CLOSE}y", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == f"{THINK_OPEN}x{THINK_CLOSE}y"


def test_text_only_prompt(processor):
    enc = processor(text="hello", return_tensors="pt")
    assert "pixel_values" not in enc and enc["input_ids"].shape[0] == 1


def test_pixel_values_dtype_and_shape_for_batch():
    ip = KimiVLImageProcessor()
    out = ip([Image.new("RGB", (28, 28)), Image.new("RGB", (42, 14))])
    assert out["pixel_values"].dtype == torch.float32
    # 28x28 -> (2,2) = 4 patches; 42x14 -> pad 56x28 -> (2,4) = 8 patches
    assert out["pixel_values"].shape[0] == 12
