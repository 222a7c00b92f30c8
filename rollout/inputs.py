"""Turn untrusted prompts and images into vLLM requests, failing early with a clear reason.

Every image is decoded here and every ``<|media_pad|>`` is matched to an image here, so a corrupt
file, an empty file or a placeholder/image mismatch is reported by index before vLLM sees it.
vLLM itself tokenizes the prompt apart from the images and leaves a surplus ``<|media_pad|>`` in
place as an ordinary token, so every kvrl path builds requests here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kimivl.processing import IMAGE_TOKEN, ImageInputError, KimiVLImageProcessor, load_image


def make_request(
    prompt: str, images: Sequence[Any] = (), image_processor: KimiVLImageProcessor | None = None
) -> dict[str, Any]:
    """A vLLM prompt dict for a chat-formatted Kimi-VL prompt with one ``<|media_pad|>`` per image.

    With ``image_processor``, image sizes are checked too (MoonViT's 512-patch grid limit).
    """
    slots = prompt.count(IMAGE_TOKEN)
    if slots != len(images):
        raise ImageInputError(
            f"the prompt has {slots} image placeholders ({IMAGE_TOKEN}) but {len(images)} images were given"
        )
    if not images:
        return {"prompt": prompt}
    decoded = [load_image(im, i) for i, im in enumerate(images)]
    if image_processor is not None:
        for i, im in enumerate(decoded):
            image_processor.check_size(*im.size, index=i)
    return {"prompt": prompt, "multi_modal_data": {"image": decoded}}


def collapse_placeholders(token_ids: list[int], placeholder_id: int) -> list[int]:
    """Undo the processor's expansion: each run of ``placeholder_id`` becomes a single one.

    vLLM expands the placeholders of token-id prompts itself, so a prompt it returned (already
    expanded) must be collapsed before it is sent back, e.g. to continue a response.
    """
    out: list[int] = []
    for t in token_ids:
        if t == placeholder_id and out and out[-1] == placeholder_id:
            continue
        out.append(t)
    return out
