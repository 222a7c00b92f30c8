"""Bad images and prompt/image mismatches fail early with the image index and the reason."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from vllm import SamplingParams

from kimivl import ImageInputError, KimiVLProcessor
from kimivl.processing import IMAGE_PLACEHOLDER, KimiVLImageProcessor, load_image
from rollout.inputs import make_request
from tests.helpers import gradient_image


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageInputError, match=r"image 0: file .*empty\.png' is empty \(0 bytes\)"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageInputError, match="image 2: no such file"):
        load_image(tmp_path / "nope.png", index=2)


@pytest.mark.parametrize("data", [b"not an image at all", png_bytes(gradient_image(40, 40))[:60]])
def test_corrupt_or_truncated_bytes(data):
    with pytest.raises(ImageInputError, match="image 1: cannot decode image"):
        load_image(data, index=1)


def test_empty_bytes():
    with pytest.raises(ImageInputError, match=r"image 0: image bytes are empty \(0 bytes\)"):
        load_image(b"")


def test_image_too_elongated_for_moonvit():
    with pytest.raises(ImageInputError, match="at most 512 patches per side"):
        KimiVLImageProcessor()(Image.new("RGB", (20000, 1)))


def test_over_limit_image_is_downscaled_not_refused():
    out = KimiVLImageProcessor(in_token_limit=64)(gradient_image(640, 480))
    h, w = out["image_grid_hws"][0].tolist()
    assert h * w <= 64 + 2 * (h + w)  # within the limit up to the 28-px padding
    assert (h, w) == (8, 10)  # 640x480 -> 45*34=1530 patches; scale 0.2046 -> 130x98 -> pad 140x112


def test_processor_placeholder_mismatch(tiny_dir):
    processor = KimiVLProcessor.from_pretrained(tiny_dir)
    image = gradient_image(28, 28)
    with pytest.raises(ImageInputError, match=r"more image placeholders \(2\) than images \(1\)"):
        processor(text=IMAGE_PLACEHOLDER * 2, images=[image])
    with pytest.raises(ImageInputError, match="2 images were given but the prompt has 1 image placeholders"):
        processor(text=IMAGE_PLACEHOLDER, images=[image, image])


def test_make_request_validates_before_vllm(tmp_path):
    bad = tmp_path / "zero.jpg"
    bad.write_bytes(b"")
    with pytest.raises(ImageInputError, match=r"2 image placeholders .* but 1 images"):
        make_request(IMAGE_PLACEHOLDER * 2, [gradient_image(28, 28)])
    with pytest.raises(ImageInputError, match=r"image 1: file .* is empty"):
        make_request(IMAGE_PLACEHOLDER * 2, [gradient_image(28, 28), bad])
    with pytest.raises(ImageInputError, match=r"image 0: .* at most 512 patches"):
        make_request(IMAGE_PLACEHOLDER, [Image.new("RGB", (20000, 2))], KimiVLImageProcessor())


def test_vllm_engine_unaffected_by_rejected_requests(llm, tmp_path):
    """A rejected request never reaches the engine; the next good one runs."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageInputError, match="image 0: cannot decode"):
        llm.generate([make_request(IMAGE_PLACEHOLDER, [bad])], SamplingParams(max_tokens=2), use_tqdm=False)
    good = make_request(IMAGE_PLACEHOLDER + " hi", [gradient_image(30, 30)])
    (out,) = llm.generate([good], SamplingParams(max_tokens=2), use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 2
