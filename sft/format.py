"""Conversations -> token ids with a loss mask on assistant tokens only (the Kimi-VL chat template).

The template renders each message on its own (``<|im_user|>user<|im_middle|>…<|im_end|>``), so a
conversation's tokens are the concatenation of its messages' tokens. Each message is rendered and
tokenized alone, which tells exactly which tokens belong to whom:

- system and user turns: no loss;
- an assistant turn's header ``<|im_assistant|>assistant<|im_middle|>``: no loss (the template writes it);
- an assistant turn's content and its closing ``<|im_end|>``: loss (the model must learn to stop).
"""

from __future__ import annotations

import logging

from tqdm import tqdm

from corpus.rows import DataError
from kimivl.processing import ImageInputError
from learner.packing import SFTExample

from .data import Conversation

log = logging.getLogger(__name__)


def assistant_header(processor) -> str:
    """The text the template writes before an assistant turn's content."""
    user = [{"role": "user", "content": "x"}]
    with_prompt = processor.apply_chat_template(user, add_generation_prompt=True)
    return with_prompt[len(processor.apply_chat_template(user)) :]


def encode(processor, conv: Conversation, max_length: int | None = None) -> SFTExample:
    """Tokenize ``conv`` with its images; raises ``ValueError`` naming the conversation on bad input."""
    tok = processor.tokenizer
    header = assistant_header(processor)
    grids: list[tuple[int, int]] = []
    pixel_values = image_grid_hws = None
    if conv.images:
        try:
            enc = processor.image_processor(conv.images)
        except ImageInputError as e:
            raise ValueError(f"conversation {conv.id} (row {conv.row}): {e}") from e
        pixel_values, image_grid_hws = enc["pixel_values"], enc["image_grid_hws"]
        grids = [tuple(g) for g in image_grid_hws.tolist()]
    ids: list[int] = []
    mask: list[int] = []
    used = 0
    for message in conv.messages:
        text = processor.apply_chat_template([message])
        text, n = processor.expand_image_tokens(text, grids, used)
        used += n
        if message["role"] == "assistant":
            if not text.startswith(header):
                raise ValueError(f"the chat template wrote no {header!r} before an assistant turn")
            pieces = [(text[: len(header)], 0), (text[len(header) :], 1)]
        else:
            pieces = [(text, 0)]
        for piece, train in pieces:
            piece_ids = tok(piece, add_special_tokens=False)["input_ids"]
            ids += piece_ids
            mask += [train] * len(piece_ids)
    if max_length is not None and len(ids) > max_length:
        raise ValueError(
            f"conversation {conv.id} (row {conv.row}) has {len(ids)} tokens, over max_length {max_length}"
        )
    return SFTExample(ids, mask, pixel_values, image_grid_hws, conv.id)


def encode_all(
    processor, convs: list[Conversation], max_length: int, skip_bad_rows: bool, desc: str
) -> list[SFTExample]:
    """Tokenize conversations; too-long or unusable ones fail naming the row, or are skipped.

    The bar ends drawn at 100%: tqdm draws at most every 0.1 s, so the last item it drew is often short
    of the end, and a bar left open at 97% reads (in a log, or ``kvrl demo``) as work still going on."""
    out = []
    with tqdm(total=len(convs), desc=f"tokenizing {desc}", unit="conv", leave=False) as bar:
        for conv in convs:
            try:
                out.append(encode(processor, conv, max_length))
            except ValueError as e:
                if not skip_bad_rows:
                    raise DataError(f"{desc}: {e}") from e
                log.warning("skipping %s: %s", desc, e)
            bar.update()
        bar.refresh()  # the 100% line (leave=False then clears it on a terminal)
    if not out:
        raise DataError(f"{desc}: no usable conversations")
    return out
