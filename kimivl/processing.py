"""Kimi-VL image processor and processor (image + text -> model inputs).

Equivalent to the official processor: 14-px patches, 2x2 merge, images over ``in_token_limit``
patches are downscaled (aspect ratio kept, bicubic), then padded bottom/right with black to a
multiple of 28 px and normalized with mean = std = 0.5. Each ``<|media_pad|>`` in the text expands to
one placeholder per merged token of its image, in image order.

Every image or prompt that cannot be processed raises :class:`ImageInputError` (a ``ValueError``)
naming the image index and the reason, before anything reaches the model or vLLM.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import BatchFeature, ProcessorMixin
from transformers.image_processing_utils import BaseImageProcessor

from .moonvit import MAX_GRID

IMAGE_TOKEN = "<|media_pad|>"
IMAGE_PLACEHOLDER = "<|media_start|>image<|media_content|><|media_pad|><|media_end|>"


class ImageInputError(ValueError):
    """An image or an image/prompt pairing that kvrl refuses, with the image index and reason."""


def load_image(image: Any, index: int = 0) -> Image.Image:
    """RGB PIL image from a PIL image, a path, raw bytes, a ``{"bytes"|"path": ...}`` dict or an HWC
    uint8 array. ``index`` names the image in errors."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    try:
        if isinstance(image, Image.Image):
            img = image
        elif isinstance(image, str | os.PathLike):
            path = Path(image)
            if not path.is_file():
                raise ImageInputError(f"image {index}: no such file {str(path)!r}")
            if path.stat().st_size == 0:
                raise ImageInputError(f"image {index}: file {str(path)!r} is empty (0 bytes)")
            img = Image.open(path)
        elif isinstance(image, bytes | bytearray):
            if not image:
                raise ImageInputError(f"image {index}: image bytes are empty (0 bytes)")
            img = Image.open(io.BytesIO(image))
        elif isinstance(image, np.ndarray):
            img = Image.fromarray(image)
        else:
            raise ImageInputError(f"image {index}: unsupported image type {type(image).__name__}")
        img.load()
        return img.convert("RGB")
    except ImageInputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError) as e:
        raise ImageInputError(f"image {index}: cannot decode image ({type(e).__name__}: {e})") from e


def fit_size(width: int, height: int, patch: int, token_limit: int) -> tuple[int, int]:
    """(width, height) after the official downscale rule: if the image has more than ``token_limit``
    whole patches, scale both sides by sqrt(limit / patches) and truncate (as vLLM counts tokens)."""
    patches = (width // patch) * (height // patch)
    if patches > token_limit:
        scale = math.sqrt(token_limit / patches)
        width, height = int(width * scale), int(height * scale)
    return width, height


class KimiVLImageProcessor(BaseImageProcessor):
    """PIL images -> ``pixel_values`` (num_patches, 3, 14, 14) and ``image_grid_hws`` (num_images, 2)."""

    model_input_names = ["pixel_values", "image_grid_hws"]

    def __init__(
        self,
        patch_size: int = 14,
        merge_kernel_size: Sequence[int] = (2, 2),
        in_token_limit: int = 4096,
        pad_input: bool = True,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)
        self.merge_kernel_size = [int(k) for k in merge_kernel_size]
        self.in_token_limit = int(in_token_limit)
        self.pad_input = pad_input
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    def num_image_tokens(self, width: int, height: int) -> int:
        """Merged tokens the model sees for an image of this size (what ``<|media_pad|>`` expands to)."""
        (gh, gw), _ = self._grid(width, height)
        kh, kw = self.merge_kernel_size
        return (gh // kh) * (gw // kw)

    def _grid(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        p, (kh, kw) = self.patch_size, self.merge_kernel_size
        w, h = fit_size(width, height, p, self.in_token_limit)
        padded_w, padded_h = math.ceil(w / (kw * p)) * kw * p, math.ceil(h / (kh * p)) * kh * p
        return (padded_h // p, padded_w // p), (w, h)

    def check_size(self, width: int, height: int, index: int = 0) -> tuple[tuple[int, int], tuple[int, int]]:
        """((grid_h, grid_w), (resized_w, resized_h)) of an image; raises if MoonViT can't take it."""
        if width < 1 or height < 1:
            raise ImageInputError(f"image {index}: has zero size {width}x{height}")
        (gh, gw), (w, h) = self._grid(width, height)
        if w < 1 or h < 1:
            raise ImageInputError(
                f"image {index}: {width}x{height} is too elongated: downscaling it to "
                f"{self.in_token_limit} patches leaves a side of 0 px"
            )
        if gh > MAX_GRID or gw > MAX_GRID:
            raise ImageInputError(
                f"image {index}: {width}x{height} gives a {gh}x{gw} patch grid; MoonViT positions "
                f"cover at most {MAX_GRID} patches per side"
            )
        return (gh, gw), (w, h)

    def process_one(self, image: Any, index: int = 0) -> tuple[torch.Tensor, tuple[int, int]]:
        img = load_image(image, index)
        width, height = img.size
        (gh, gw), (w, h) = self.check_size(width, height, index)
        if (w, h) != (width, height):
            img = img.resize((w, h), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (gw * self.patch_size, gh * self.patch_size))
        canvas.paste(img, (0, 0))
        pixels = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        pixels = (pixels - mean) / std
        p = self.patch_size
        # (3, gh*p, gw*p) -> (gh*gw, 3, p, p), patches in row-major grid order
        patches = pixels.view(3, gh, p, gw, p).permute(1, 3, 0, 2, 4).reshape(gh * gw, 3, p, p)
        return patches, (gh, gw)

    def preprocess(self, images: Any, return_tensors: Any = None, **kwargs) -> BatchFeature:
        if images is None:
            images = []
        elif not isinstance(images, list | tuple):
            images = [images]
        patches, grids = [], []
        for i, image in enumerate(images):
            pv, grid = self.process_one(image, i)
            patches.append(pv)
            grids.append(grid)
        p = self.patch_size
        data = {
            "pixel_values": torch.cat(patches) if patches else torch.zeros(0, 3, p, p),
            "image_grid_hws": torch.tensor(grids, dtype=torch.long).view(-1, 2),
        }
        return BatchFeature(data=data)

    def __call__(self, images: Any = None, **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)


class KimiVLProcessor(ProcessorMixin):
    """Kimi-VL processor: image processor + tokenizer + chat template."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = IMAGE_TOKEN
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def expand_image_tokens(
        self, text: str, grid_hws: Sequence[tuple[int, int]], start: int = 0
    ) -> tuple[str, int]:
        """Expand each ``<|media_pad|>`` to one per merged token of its image -> (text, images used)."""
        parts = text.split(IMAGE_TOKEN)
        kh, kw = self.image_processor.merge_kernel_size
        out = [parts[0]]
        for j, part in enumerate(parts[1:]):
            idx = start + j
            if idx >= len(grid_hws):
                raise ImageInputError(
                    f"the prompt has more image placeholders ({start + len(parts) - 1}) than images "
                    f"({len(grid_hws)})"
                )
            gh, gw = grid_hws[idx]
            out.append(IMAGE_TOKEN * ((gh // kh) * (gw // kw)))
            out.append(part)
        return "".join(out), len(parts) - 1

    def __call__(self, text=None, images=None, return_tensors=None, **kwargs) -> BatchFeature:
        if text is None and images is None:
            raise ValueError("KimiVLProcessor needs text, images or both")
        image_inputs = self.image_processor(images) if images is not None else {}
        data: dict[str, Any] = dict(image_inputs)
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            grids = [tuple(g) for g in image_inputs["image_grid_hws"].tolist()] if image_inputs else []
            used = 0
            for i, t in enumerate(texts):
                texts[i], n = self.expand_image_tokens(t, grids, used)
                used += n
            if used != len(grids):
                raise ImageInputError(
                    f"{len(grids)} images were given but the prompt has {used} image placeholders "
                    f"({IMAGE_TOKEN}); add one placeholder per image"
                )
            kwargs.pop("images_kwargs", None)
            data.update(self.tokenizer(texts, return_tensors=return_tensors, **kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors if text is not None else None)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "image_grid_hws"]
