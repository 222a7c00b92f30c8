"""A text-only workload whose response lengths are heavy-tailed and set by the prompt, for
``kvrl bench longtail`` (partial rollouts and other rollout long-tail techniques).

Each problem asks for the sum of the whole numbers below ``n``; the thinking writes the ``size`` =
n - 1 terms out, largest first, and the answer follows it::

    question: "Add every whole number below n, largest first: n=5."
    response: "◁think▷4+3+2+1◁/think▷10"

So the trace's length grows linearly with ``size``: with the tiny model's tokenizer every number up to
99 is one token after ``=`` or ``+``, so 2 tokens a term plus 2 or 3 for the tags and the answer. Each
term is one less than the number before it (the first, one less than the question's n) and the last
is 1, so when to stop is a local decision that even the tiny model learns in minutes: a model trained
on the traces stops on its own, and its samples of one prompt have about the same length (lengths
correlated within a group), with no ``ignore_eos`` or per-request ``max_tokens`` to force them.

Why so bare: the tiny model learns a map it uses every step (k -> k - 1 after "+") in minutes of
SFT, but not one it uses once an example. Traces that had to copy a number from the question (a list
of digits to add one by one; "s" and "n" to start a count-down from) left its sampled lengths
unrelated to the question's (Spearman correlation with the size about 0). Here the first term is the same
k -> k - 1 step, taken from the only number of the question. The answer is only the total, which the
tiny model gets wrong: every answer token is one where a sample can wander. The question's text is the
same for every n, so the prompts repeat (as often as their n does).

The length law: ``size`` follows a discrete power law on ``[low, high]``, P(size = k) ∝ k^-alpha.
With the defaults (alpha 1.5 on [2, 98]) the median size is 5, p90 34 and p99 86; in tokens of the
response (tiny tokenizer) that is 12, 69 and 175: p99 is 15x the median (``tests/corpus/test_longtail.py``
checks at least 4x on 2,000 drawn traces) and the longest, size 98, is 199 tokens.

The SFT traces may come from a flatter law than the prompts (``sft_alpha``; 0 is uniform): a tiny
model sees the long counts often enough to learn them, while the prompts the bench samples keep the
heavy tail. Answers are integers, checked by the ``math`` verifier.

Writes, under ``out_dir``: ``train.jsonl`` (prompts: ``id, question, answer, size, difficulty``, the
last a prior of (size - low) / (high - low)) and ``sft_train.jsonl`` (conversations with traces).
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path

from runkit.tokens import THINK_CLOSE, THINK_OPEN

MAX_SIZE = 98  # n = 99: the tiny tokenizer's numbers after "=" and "+" are single tokens up to 99


@dataclass(frozen=True)
class CountdownSum:
    id: str
    size: int  # terms: size, size - 1, ..., 1 (the question's n is size + 1)

    @property
    def answer(self) -> int:
        return self.size * (self.size + 1) // 2

    def question(self) -> str:
        return f"Add every whole number below n, largest first: n={self.size + 1}."

    def thinking(self) -> str:
        """``size+size-1+…+1``: the terms, largest first."""
        return "+".join(str(t) for t in range(self.size, 0, -1))

    def response(self) -> str:
        return f"{THINK_OPEN}{self.thinking()}{THINK_CLOSE}{self.answer}"


def size_law(alpha: float, low: int, high: int) -> list[float]:
    """Cumulative P(size <= low + i) of the power law P(size = k) ∝ k^-alpha on [low, high]."""
    weights = [k**-alpha for k in range(low, high + 1)]
    total = sum(weights)
    return [w / total for w in itertools.accumulate(weights)]


def draw_size(rng: random.Random, cumulative: list[float], low: int) -> int:
    return low + min(bisect.bisect_left(cumulative, rng.random()), len(cumulative) - 1)


def make_problems(
    n: int, seed: int, alpha: float = 1.5, low: int = 2, high: int = MAX_SIZE, prefix: str = "lt"
) -> list[CountdownSum]:
    """``n`` problems whose sizes follow the power law (see the module docstring); deterministic in
    ``seed``."""
    if not 1 <= low <= high:
        raise ValueError(f"need 1 <= low <= high (got low={low}, high={high})")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0 (got {alpha})")
    rng, cumulative = random.Random(seed), size_law(alpha, low, high)
    return [CountdownSum(f"{prefix}{i:05d}", draw_size(rng, cumulative, low)) for i in range(n)]


def make_longtail(
    out_dir: str | Path,
    problems: int,
    seed: int = 0,
    alpha: float = 1.5,
    low: int = 2,
    high: int = MAX_SIZE,
    sft_problems: int | None = None,
    sft_alpha: float | None = None,
) -> dict:
    """Write ``problems`` prompts to ``train.jsonl`` and SFT conversations to ``sft_train.jsonl`` under
    ``out_dir``. By default the conversations are the prompts' own traces; with ``sft_problems`` or
    ``sft_alpha`` they are traces of a separate draw (``sft_problems`` of them, sizes from the power
    law with ``sft_alpha``, ids ``lt-sft…``). Returns a summary with the size quantiles of each file."""
    if problems < 1:
        raise ValueError(f"problems must be >= 1 (got {problems})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = make_problems(problems, seed, alpha, low, high)
    if sft_problems is None and sft_alpha is None:
        traced = prompts
    else:
        count = problems if sft_problems is None else sft_problems
        law = alpha if sft_alpha is None else sft_alpha
        traced = make_problems(count, seed + 1, law, low, high, prefix="lt-sft")
    with open(out / "train.jsonl", "w", encoding="utf-8") as f:
        for p in prompts:
            row = {
                "id": p.id,
                "question": p.question(),
                "answer": str(p.answer),
                "size": p.size,
                "difficulty": round((p.size - low) / max(high - low, 1), 4),
            }
            f.write(json.dumps(row) + "\n")
    with open(out / "sft_train.jsonl", "w", encoding="utf-8") as f:
        for p in traced:
            row = {
                "id": p.id,
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": p.question()}]},
                    {"role": "assistant", "content": p.response()},
                ],
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {
        "out": str(out),
        "train": len(prompts),
        "sft": len(traced),
        "train_sizes": _quantiles([p.size for p in prompts]),
        "sft_sizes": _quantiles([p.size for p in traced]),
        "seed": seed,
    }


def _quantiles(values: list[int]) -> dict[str, int]:
    s = sorted(values)
    return {f"p{q}": s[min(len(s) - 1, len(s) * q // 100)] for q in (50, 90, 99)} | {"max": s[-1]}
