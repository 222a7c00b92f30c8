"""SFT dataset rows: every bad row names the file and row, or is skipped and counted."""

from __future__ import annotations

import json

import pytest

from corpus.problems import DataError
from sft.data import load_conversations
from tests.helpers import gradient_image

GOOD = {
    "id": "ok",
    "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": "◁think▷red◁/think▷red"},
    ],
    "images": ["a.png"],
}


def write(tmp_path, rows) -> str:
    gradient_image(40, 30).save(tmp_path / "a.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    path = tmp_path / "sft.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def with_(**changes):
    return {**GOOD, **changes}


BAD = [
    (with_(messages=[{"role": "user", "content": "hi"}]), "no assistant turn"),
    (with_(messages=[GOOD["messages"][0], {"role": "assistant", "content": "  "}]), "no assistant turn"),
    (with_(images=["missing.png"]), "missing.png"),
    (with_(images=["corrupt.png"]), "image 0: cannot decode"),
    (with_(images=[]), "1 image parts but 0 images"),
    (with_(messages=[{"role": "robot", "content": "x"}, GOOD["messages"][1]]), "role 'robot'"),
    (
        with_(messages=[{"role": "user", "content": "<|media_pad|> hi"}, GOOD["messages"][1]]),
        "raw <|media_pad|>",
    ),
    (with_(messages=[{"role": "user", "content": 7}, GOOD["messages"][1]]), "content must be text"),
    ({"id": "x"}, "non-empty 'messages'"),
    ("{not json", "not valid JSON"),
]


@pytest.mark.parametrize(("row", "reason"), BAD)
def test_bad_row_names_file_row_and_reason(tmp_path, row, reason):
    path = write(tmp_path, [GOOD, row])
    with pytest.raises(DataError) as err:
        load_conversations(path)
    assert f"{path}, row 2" in str(err.value) and reason in str(err.value)


def test_skip_bad_rows_counts_them(tmp_path):
    path = write(tmp_path, [GOOD, BAD[0][0], BAD[2][0], GOOD])
    data = load_conversations(path, skip_bad_rows=True)
    assert len(data) == 2 and sum(data.skipped.values()) == 2
    assert data.conversations[0].images[0].endswith("a.png")


def test_inline_image_parts(tmp_path):
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        ]
    }
    (conv,) = load_conversations(write(tmp_path, [row])).conversations
    assert conv.id == "1" and len(conv.images) == 1 and conv.messages[0]["content"][0] == {"type": "image"}
