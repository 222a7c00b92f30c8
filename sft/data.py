"""SFT datasets: chat conversations with images and long thinking traces.

One row per conversation::

    {"id": "c1",
     "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is 3+4?"}]},
                  {"role": "assistant", "content": "◁think▷3 plus 4 is 7.◁/think▷7"}],
     "images": ["img/c1.png"]}

``content`` is text or a list of parts (``{"type": "text", "text": …}``, ``{"type": "image"}``); the
``images`` column (paths relative to the data file, or bytes) gives one image per image part, in order.
An image part may carry its own ``"image"`` instead. Files are read as in :mod:`corpus.rows` (jsonl line
by line, or anything ``datasets`` reads).

A bad row (no assistant turn, a missing or corrupt image, an image count that does not match the
image parts, a raw ``<|media_pad|>`` in text) raises :class:`corpus.rows.DataError` naming the file and
row, or, with ``skip_bad_rows``, is skipped and counted by reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corpus.rows import CONVERSATIONS, DataError, data_file, image_entry, read_rows
from kimivl.processing import IMAGE_TOKEN

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


@dataclass
class Conversation:
    id: str
    messages: list[dict[str, Any]]  # {"role", "content": [parts]} with parts normalized to lists
    images: list[Any] = field(default_factory=list)
    row: int = 0


@dataclass
class ConversationSet:
    source: str
    conversations: list[Conversation]
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.conversations)


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise DataError(f"{where}: content must be text or a list of parts, got {type(content).__name__}")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise DataError(f"{where}: part {j} has no text")
            if IMAGE_TOKEN in text:
                raise DataError(f"{where}: part {j} holds a raw {IMAGE_TOKEN}; use an image part instead")
            parts.append({"type": "text", "text": text})
        elif kind in ("image", "image_url"):
            parts.append({"type": "image", **({"image": part["image"]} if part.get("image") else {})})
        else:
            raise DataError(f"{where}: part {j} has type {kind!r}; expected 'text' or 'image'")
    return parts


def parse_conversation(raw: Any, source: Path, row: int, check_images: bool = True) -> Conversation:
    where = f"{source}, row {row}"
    if isinstance(raw, Exception):
        raise raw
    if not isinstance(raw, dict) or not isinstance(raw.get("messages"), list) or not raw["messages"]:
        raise DataError(f"{where}: expected an object with a non-empty 'messages' list")
    messages = []
    for i, m in enumerate(raw["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else None
            raise DataError(f"{where}: message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        messages.append({"role": m["role"], "content": _parts(m.get("content"), f"{where}, message {i}")})
    answered = [
        m
        for m in messages
        if m["role"] == "assistant" and any(p.get("text", "").strip() for p in m["content"])
    ]
    if not answered:
        raise DataError(f"{where}: no assistant turn with text (nothing to train on)")
    image_parts = [p for m in messages for p in m["content"] if p["type"] == "image"]
    column = raw.get("images") or []
    column = column if isinstance(column, list) else [column]
    inline = [p["image"] for p in image_parts if "image" in p]
    if inline and column:
        raise DataError(f"{where}: images given both inline in parts and in the 'images' column")
    entries = inline or column
    if len(entries) != len(image_parts):
        raise DataError(f"{where}: {len(image_parts)} image parts but {len(entries)} images")
    images = [image_entry(e, source.parent, where, i, check_images) for i, e in enumerate(entries)]
    for p in image_parts:
        p.pop("image", None)
    return Conversation(str(raw.get("id", row)), messages, images, row)


def load_conversations(
    path: str | Path, skip_bad_rows: bool = False, check_images: bool = True
) -> ConversationSet:
    """Read and validate an SFT dataset (see the module docstring). A path that does not exist, a folder
    of several data files, or a file of prompts raises a :class:`DataError` before any row."""
    path = data_file(path, CONVERSATIONS)
    out, skipped = [], Counter()
    for row, raw in read_rows(path, CONVERSATIONS):
        try:
            out.append(parse_conversation(raw, path, row, check_images))
        except DataError as e:
            if not skip_bad_rows:
                raise
            skipped[str(e).split(": ", 1)[-1].split(" (")[0]] += 1
            log.warning("skipping %s", e)
    if not out:
        raise DataError(
            f"{path}: no usable rows" + (f" ({sum(skipped.values())} skipped)" if skipped else "")
        )
    if skipped:
        log.warning("%s: skipped %d bad rows: %s", path, sum(skipped.values()), dict(skipped))
    return ConversationSet(str(path), out, skipped)
