"""Difficulty values: validation of a dataset's ``difficulty`` column and estimation from pass rates.

kvrl's difficulty is a number in [0, 1]: 1 - (pass rate of k samples from the current model), as
Kimi k1.5 estimates it (sec. 2.3.4). 0 means always solved, 1 never.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real


class DifficultyError(ValueError):
    """A difficulty value that is not a number in [0, 1]; the message names the file and row."""


def check_difficulty(value: object, source: str, row: int) -> float:
    """``value`` as a float in [0, 1], or :class:`DifficultyError` naming ``source`` and ``row``."""
    where = f"{source}, row {row}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise DifficultyError(
            f"{where}: difficulty must be a number in [0, 1], got {type(value).__name__} {value!r}"
        )
    v = float(value)
    if math.isnan(v):
        raise DifficultyError(f"{where}: difficulty is NaN")
    if not 0.0 <= v <= 1.0:
        raise DifficultyError(f"{where}: difficulty {v} is outside [0, 1]")
    return v


def difficulty_from_outcomes(outcomes: Sequence[float]) -> float:
    """1 - pass rate of a problem's k sampled outcomes (each 0 or 1)."""
    if not outcomes:
        raise ValueError("no outcomes to estimate difficulty from")
    return 1.0 - sum(outcomes) / len(outcomes)


def easy_to_hack(no_thinking_outcomes: Sequence[float]) -> bool:
    """k1.5's filter: a problem answered correctly *without* thinking in any of N tries is easy to hack."""
    return any(o >= 1.0 for o in no_thinking_outcomes)


LEVELS = 4  # difficulty bins of the per-level accuracy: [0, 0.25), [0.25, 0.5), [0.5, 0.75), [0.75, 1]


def accuracy_by_level(pairs: Sequence[tuple[float | None, bool]], levels: int = LEVELS) -> dict[str, float]:
    """Accuracy per difficulty bin, ``{"accuracy/difficulty_0.25-0.50": 0.6, ...}``, from (difficulty,
    correct) pairs; rows without a difficulty and empty bins are left out. A curriculum moves a run's
    batches to harder problems, so its batch accuracy can fall while every level's rises: this shows it."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    sums: dict[int, list[int]] = {}
    for difficulty, correct in pairs:
        if difficulty is None:
            continue
        level = min(int(difficulty * levels), levels - 1)
        tally = sums.setdefault(level, [0, 0])
        tally[0] += bool(correct)
        tally[1] += 1
    return {
        f"accuracy/difficulty_{k / levels:.2f}-{(k + 1) / levels:.2f}": right / n
        for k, (right, n) in sorted(sums.items())
    }
