"""`kvrl data synth`: images that must be read, multi-step exact answers, traces that walk the steps."""

from __future__ import annotations

import json
import re

import datasets
import pytest
from PIL import Image

from corpus.problems import load_problems
from corpus.synth import CELL, COLOURS, HASTY_THINKING, MAX_RECHECKS, RECHECK, SynthProblem, synthesize
from rewards import verify_response
from sft.data import load_conversations


def test_answers_follow_the_grid_by_hand():
    cells = [["red", None, "blue"], [None, None, None], ["green", "green", None]]
    # 4 shapes; level 2 with k=3: 4 + 3 = 7; level 3 with k=3, m=2: 4 + 3 + 2 = 9
    assert SynthProblem("a", 1, cells, 3, 2).answer == 4
    assert SynthProblem("a", 2, cells, 3, 2).answer == 7
    p = SynthProblem("a", 3, cells, 3, 2)
    assert p.answer == 9
    thinking = p.thinking()
    # Row by row with a running total (rows of 2, 0 and 2 shapes), then the two additions.
    assert thinking == (
        "Row 1: red, empty, blue. That is 2. Row 2: empty, empty, empty. That is 0, so 2 + 0 = 2. "
        "Row 3: green, green, empty. That is 2, so 2 + 2 = 4. Add 3: 4 + 3 = 7. Add 2: 7 + 2 = 9."
    )
    assert verify_response(p.response(), "9", "math").correct
    # The hasty trace reads row 1 only and takes every row to be like it: 3 x 2 = 6 shapes instead of
    # 4, then adds as usual, 6 + 3 + 2 = 11: wrong here, as it is whenever the rows are uneven.
    assert p.response(hasty=True) == (
        "◁think▷Row 1: red, empty, blue. That is 2. About the same in each row: 3 x 2 = 6. "
        "Add 3: 6 + 3 = 9. Add 2: 9 + 2 = 11.◁/think▷The answer is 11."
    )
    assert not verify_response(p.response(hasty=True), "9", "math").correct
    even = SynthProblem("b", 2, [["red", None, None], [None, "blue", None], [None, None, "red"]], 3, 1)
    assert even.hasty_answer == even.answer == 6 and "3 x 1 = 3. Add 3: 3 + 3 = 6." in even.response(True)
    # The image shows exactly those cells: a cell's centre pixel is its colour, or white when empty.
    image = p.render()
    for r, row in enumerate(cells):
        for c, colour in enumerate(row):
            centre = image.getpixel((c * CELL + CELL // 2, r * CELL + CELL // 2))
            assert centre == (COLOURS[colour] if colour else (255, 255, 255))


def test_synth_writes_splits_datasets_reads(tmp_path):
    summary = synthesize(tmp_path, n=30, seed=3, heldout=9)
    assert summary["train"] == 30
    train = load_problems(tmp_path / "train.jsonl").problems
    held = load_problems(tmp_path / "heldout.jsonl").problems
    assert len(train) == 30 and len(held) == 9 and not {p.id for p in train} & {p.id for p in held}
    assert {p.columns["level"] for p in train} == {1, 2, 3}
    assert all(Image.open(p.images[0]).size == (84, 84) for p in held)
    sft = load_conversations(tmp_path / "sft_train.jsonl").conversations
    assert [c.id for c in sft] == [p.id for p in train]
    for c, p in zip(sft, train, strict=True):
        assert verify_response(c.messages[1]["content"][0]["text"], p.answer, "math").correct
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "heldout.jsonl"))["train"]
    assert ds.num_rows == 9 and set(ds.column_names) >= {"id", "question", "answer", "images", "level"}
    # Deterministic in the seed.
    again = synthesize(tmp_path / "again", n=30, seed=3, heldout=9)
    assert (tmp_path / "again" / "train.jsonl").read_text() == (tmp_path / "train.jsonl").read_text()
    assert again["seed"] == 3 and again["hasty_traces"] == 0


def test_hasty_fraction_of_traces_takes_the_row_1_shortcut(tmp_path):
    summary = synthesize(tmp_path, n=400, seed=1, heldout=4, hasty=0.4)
    sft = load_conversations(tmp_path / "sft_train.jsonl").conversations
    texts = [c.messages[1]["content"][0]["text"] for c in sft]
    hasty = [t for t in texts if HASTY_THINKING in t]
    assert len(hasty) == summary["hasty_traces"] and 0.3 < len(hasty) / 400 < 0.5
    assert all("Row 1:" in t for t in texts if t not in hasty)
    # The problems (and so train.jsonl) do not depend on the hasty fraction.
    synthesize(tmp_path / "plain", n=400, seed=1, heldout=4)
    assert (tmp_path / "plain" / "train.jsonl").read_text() == (tmp_path / "train.jsonl").read_text()
    with pytest.raises(ValueError, match="--hasty"):
        synthesize(tmp_path / "bad", n=4, hasty=1.0)
    first = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])
    assert first["difficulty"] == round((first["level"] - 1) / 3, 4)


def test_recheck_traces_reread_the_cells_and_hold_no_number(tmp_path):
    summary = synthesize(tmp_path, n=400, seed=1, heldout=4, hasty=0.5, recheck=0.5)
    sft = load_conversations(tmp_path / "sft_train.jsonl").conversations
    texts = [c.messages[1]["content"][0]["text"] for c in sft]
    rechecked = [t for t in texts if RECHECK in t]
    # Only stepwise traces recheck: about half of the ~200 that are not hasty, about a quarter of them
    # twice (each check is followed by another with chance 0.5), never more than MAX_RECHECKS times.
    assert len(rechecked) == summary["recheck_traces"] and 70 < len(rechecked) < 130
    assert sum(summary["rechecks"].values()) == len(rechecked)
    assert set(summary["rechecks"]) == {1, MAX_RECHECKS}
    assert 25 < sum(t.count(RECHECK) > 1 for t in rechecked) < 75
    assert not any(HASTY_THINKING in t for t in rechecked)
    for text in rechecked:
        first, *again = text.removeprefix("◁think▷").split("◁/think▷")[0].split(f" {RECHECK} ")
        # Each check names the first pass's cells again, word for word, and holds no number: the last
        # number of the thinking is the first pass's, and it is the answer.
        rows = re.findall(r"Row \d: ([a-z, ]+)\. That is \d", first)
        assert 1 <= len(again) <= MAX_RECHECKS and len(rows) == 3
        assert set(again) == {f"{'; '.join(rows)}. The same."} and not re.search(r"\d", "".join(again))
        answer = text.rsplit("The answer is ", 1)[1].rstrip(".")
        assert re.findall(r"\d+", first)[-1] == answer
    # The same problem with and without rechecks: same answer, a longer thinking.
    problem = SynthProblem("p", 3, [["red", None, "blue"], [None] * 3, ["green"] * 3], k=2, m=1)
    plain, twice = problem.response(), problem.response(rechecks=2)
    assert plain.endswith("The answer is 8.") and twice.endswith("The answer is 8.")
    once = (
        "Row 1: red, empty, blue. That is 2. Row 2: empty, empty, empty. That is 0, so 2 + 0 = 2."
        " Row 3: green, green, green. That is 3, so 2 + 3 = 5. Add 2: 5 + 2 = 7. Add 1: 7 + 1 = 8."
    )
    assert plain == f"◁think▷{once}◁/think▷The answer is 8."
    again = " Let me check again. red, empty, blue; empty, empty, empty; green, green, green. The same."
    assert twice == f"◁think▷{once}{again}{again}◁/think▷The answer is 8."
    # Without rechecks the data are those of a run that never asked for them.
    synthesize(tmp_path / "plain", n=400, seed=1, heldout=4, hasty=0.5)
    plain_texts = (tmp_path / "plain" / "sft_train.jsonl").read_text()
    assert (
        RECHECK not in plain_texts
        and (tmp_path / "plain" / "train.jsonl").read_text() == (tmp_path / "train.jsonl").read_text()
    )
    with pytest.raises(ValueError, match="--recheck"):
        synthesize(tmp_path / "bad", n=4, recheck=1.0)


def test_the_tiny_tokenizer_keeps_every_word_and_number_of_the_task_whole(tmp_path):
    # Every piece the byte-level pre-tokenizer cuts a trace into (" empty", " 12", " =", ".") is one
    # token: a trace is as many tokens as it has words, numbers and punctuation marks, so a step of
    # the arithmetic reads one token per number (the old tokenizer spelt " empty" in 5 tokens and
    # " 10" in 2).
    from kimivl.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    pieces = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str
    synthesize(tmp_path, n=60, seed=5, heldout=0, hasty=0.5, recheck=0.5)
    sft = load_conversations(tmp_path / "sft_train.jsonl").conversations
    texts = [c.messages[1]["content"][0]["text"] for c in sft]
    texts += [c.messages[0]["content"][-1]["text"] for c in sft]  # the questions
    texts += [f"{a} + {b} = {a + b}." for a in range(21) for b in range(21)]
    for text in texts:
        plain = text.replace("◁think▷", "").replace("◁/think▷", " ")
        assert len(tokenizer(plain)["input_ids"]) == len(pieces(plain)), plain
