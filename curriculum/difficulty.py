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
