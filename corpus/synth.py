"""``kvrl data synth``: a local visual reasoning dataset whose answers need the image and several steps.

Each image is a 3x3 grid of 28-px cells (84x84 px: one merged vision token per cell); a cell is empty
or holds a coloured square or disk. The question asks for a number computed from the shape count:

| level | question | steps |
|---|---|---|
| 1 | how many cells hold a shape | count row by row, keeping a running total |
| 2 | the count plus k (2-4) | + one addition |
| 3 | the count plus k, plus m (1-5) | + two additions |

More steps = harder (``level``, and ``difficulty`` = a prior of (level - 1) / 3 for the curriculum
until ``kvrl difficulty`` measures one). Long-CoT traces for SFT walk the steps inside
``◁think▷…◁/think▷``, so cutting the thinking short loses the answer: the thinking budget matters.
A ``hasty`` fraction of the traces takes a shortcut instead: it reads row 1, takes every row to hold
as many shapes ("About the same in each row: 3 x 2 = 6."), and does the additions on that estimate.
The shortcut is shorter and right only when the rows are even (about 3 grids in 10), so after SFT
the model holds two strategies of unequal worth; with a hasty majority the worse one is also its
argmax, which only RL can change: thinking longer pays, as in the Kimi k1.5 and Kimi-VL reports.
``recheck`` adds overthinking: after the rows and the additions, with that chance a stepwise trace
says "Let me check again.", names the grid's cells again row by row and ends "The same." (and
with the same chance again, at most ``MAX_RECHECKS`` times): longer, no more right, for Kimi k1.5's
length reward to remove. A recheck holds no number, so the answer is still the last number of the
thinking, as in a trace without one, and a slip while rereading changes nothing: correctness alone
has no reason to drop rechecks (a recheck that counted again would make the answer a copy from
across the count's numbers, which the tiny model gets wrong often enough for RL to drop it).
Answers are integers, checked by the ``math`` verifier.

Writes, under ``--out``: ``images/``, ``train.jsonl`` and ``heldout.jsonl`` (prompt datasets:
``id, question, answer, images, level, difficulty``) and ``sft_train.jsonl`` (conversations with
traces for the train problems). All jsonl: ``datasets.load_dataset("json", data_files=…)`` reads them.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from runkit.tokens import THINK_CLOSE, THINK_OPEN

CELL, GRID = 28, 3
HASTY_THINKING = "About the same in each row:"
RECHECK = "Let me check again."
RECHECK_END = "The same."
MAX_RECHECKS = 2
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 230), "yellow": (235, 215, 40)}


@dataclass
class SynthProblem:
    id: str
    level: int
    cells: list[list[str | None]]  # GRID x GRID colour names (None: empty)
    k: int
    m: int

    @property
    def count(self) -> int:
        return sum(self._counts)

    @property
    def answer(self) -> int:
        return {1: self.count, 2: self.count + self.k, 3: self.count + self.k + self.m}[self.level]

    def question(self) -> str:
        return {
            1: "How many cells of the grid hold a shape?",
            2: f"Count the shapes in the grid, then add {self.k}.",
            3: f"Count the shapes in the grid, add {self.k}, then add {self.m}.",
        }[self.level]

    def thinking(self, rechecks: int = 0) -> str:
        """The worked steps: each row's cells and count with the running total, then the additions;
        then ``rechecks`` times over, the rows' cells read again."""
        lines, total = [f"{self._row(0)}."], self._counts[0]
        for r in range(1, GRID):
            lines.append(f"{self._row(r)}, so {total} + {self._counts[r]} = {total + self._counts[r]}.")
            total += self._counts[r]
        reread = f"{RECHECK} {'; '.join(map(self._cells, range(GRID)))}. {RECHECK_END}"
        return " ".join([*lines, *self._arithmetic(total), *[reread] * rechecks])

    @property
    def _counts(self) -> list[int]:
        return [sum(c is not None for c in row) for row in self.cells]

    def _cells(self, r: int) -> str:
        """``red, empty, blue``: row ``r``'s cells (0-based ``r``)."""
        return ", ".join(c or "empty" for c in self.cells[r])

    def _row(self, r: int) -> str:
        """``Row 1: red, empty, blue. That is 2`` (0-based ``r``; no full stop)."""
        return f"Row {r + 1}: {self._cells(r)}. That is {self._counts[r]}"

    def _arithmetic(self, total: int) -> list[str]:
        """The question's additions, starting from ``total``."""
        lines = []
        if self.level >= 2:
            lines.append(f"Add {self.k}: {total} + {self.k} = {total + self.k}.")
        if self.level == 3:
            lines.append(f"Add {self.m}: {total + self.k} + {self.m} = {total + self.k + self.m}.")
        return lines

    @property
    def estimate(self) -> int:
        """The hasty count: the first row's, times the number of rows (right when rows are even)."""
        return GRID * self._counts[0]

    @property
    def hasty_answer(self) -> int:
        return self.answer - self.count + self.estimate

    def hasty_thinking(self) -> str:
        """Row 1 only, extrapolated to the grid, then the same additions on the estimate."""
        estimate = f"{HASTY_THINKING} {GRID} x {self._counts[0]} = {self.estimate}."
        return " ".join([f"{self._row(0)}.", estimate, *self._arithmetic(self.estimate)])

    def response(self, hasty: bool = False, rechecks: int = 0) -> str:
        if hasty:
            return f"{THINK_OPEN}{self.hasty_thinking()}{THINK_CLOSE}The answer is {self.hasty_answer}."
        return f"{THINK_OPEN}{self.thinking(rechecks)}{THINK_CLOSE}The answer is {self.answer}."

    def render(self) -> Image.Image:
        image = Image.new("RGB", (CELL * GRID, CELL * GRID), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        for r, row in enumerate(self.cells):
            for c, colour in enumerate(row):
                if colour is None:
                    continue
                box = (c * CELL + 4, r * CELL + 4, c * CELL + CELL - 5, r * CELL + CELL - 5)
                shape = draw.ellipse if (r + c + len(colour)) % 2 else draw.rectangle
                shape(box, fill=COLOURS[colour])
        return image


def make_problem(rng: random.Random, index: int, level: int) -> SynthProblem:
    fill = rng.random()
    cells = [
        [rng.choice(list(COLOURS)) if rng.random() < fill else None for _ in range(GRID)] for _ in range(GRID)
    ]
    return SynthProblem(f"synth{index:05d}", level, cells, k=rng.randint(2, 4), m=rng.randint(1, 5))


def synthesize(
    out: str | Path,
    n: int,
    seed: int = 0,
    heldout: int = 256,
    hasty: float = 0.0,
    recheck: float = 0.0,
    levels=(1, 2, 3),
) -> dict:
    """Write ``n`` train + ``heldout`` held-out problems (levels in equal shares) under ``out``; a
    ``hasty`` fraction of the SFT traces takes the row-1 shortcut; each of the others rechecks with
    chance ``recheck``, and again with that chance, up to ``MAX_RECHECKS`` times (module docstring)."""
    if n < 1 or heldout < 0:
        raise ValueError(f"--n must be >= 1 and --heldout >= 0 (got {n}, {heldout})")
    for name, value in (("hasty", hasty), ("recheck", recheck)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"--{name} must be in [0, 1) (got {value})")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    problems = [make_problem(rng, i, levels[i % len(levels)]) for i in range(n + heldout)]
    splits = {"train": problems[:n], "heldout": problems[n:]}
    for name, items in splits.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for p in items:
                image = f"images/{p.id}.png"
                p.render().save(out / image)
                row = {
                    "id": p.id,
                    "question": p.question(),
                    "answer": str(p.answer),
                    "images": [image],
                    "level": p.level,
                    "difficulty": round((p.level - 1) / 3, 4),
                }
                f.write(json.dumps(row) + "\n")
    hasty_ids = {p.id for p in splits["train"] if rng.random() < hasty}
    # drawn only when asked for, so that recheck=0 writes what earlier versions wrote
    rechecks = Counter()
    for p in splits["train"]:
        while recheck and p.id not in hasty_ids and rechecks[p.id] < MAX_RECHECKS and rng.random() < recheck:
            rechecks[p.id] += 1
    with open(out / "sft_train.jsonl", "w", encoding="utf-8") as f:
        for p in splits["train"]:
            user = [{"type": "image"}, {"type": "text", "text": p.question()}]
            row = {
                "id": p.id,
                "messages": [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": p.response(p.id in hasty_ids, rechecks[p.id])},
                ],
                "images": [f"images/{p.id}.png"],
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {
        "out": str(out),
        "train": n,
        "heldout": heldout,
        "hasty_traces": len(hasty_ids),
        "recheck_traces": len(rechecks),
        "rechecks": {r: sum(v == r for v in rechecks.values()) for r in range(1, MAX_RECHECKS + 1)},
        "seed": seed,
    }
