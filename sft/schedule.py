"""Learning-rate schedules as a list of phases: warm up, decay, and re-warm in the next phase.

Kimi-VL's long-CoT SFT (report sec. 2.4) trains two epochs: the first decays the learning rate from
2e-5 to 2e-6, the second re-warms to 1e-5 and decays to 1e-6. As config::

    schedule:
      - {epochs: 1, warmup: 0.03, peak_lr: 2.0e-5, final_lr: 2.0e-6}
      - {epochs: 1, warmup: 0.03, peak_lr: 1.0e-5, final_lr: 1.0e-6}

Within a phase of S steps: linear from ``start_lr`` to ``peak_lr`` over the first ``warmup`` x S steps,
then ``decay`` (cosine, linear or constant) from ``peak_lr`` to ``final_lr`` at the phase's last step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass
class LRPhase:
    epochs: float = 1.0
    peak_lr: float = 2e-5
    final_lr: float = 2e-6
    warmup: float = 0.03  # fraction of the phase's steps
    start_lr: float = 0.0
    decay: Literal["cosine", "linear", "constant"] = "cosine"

    def __post_init__(self):
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup is a fraction of the phase in [0, 1), got {self.warmup}")
        if min(self.peak_lr, self.final_lr, self.start_lr) < 0:
            raise ValueError("learning rates must be >= 0")


def phase_steps(phases: Sequence[LRPhase], steps_per_epoch: int) -> list[int]:
    """Optimizer steps in each phase (at least 1)."""
    return [max(1, round(p.epochs * steps_per_epoch)) for p in phases]


def lr_at(step: int, phases: Sequence[LRPhase], steps_per_epoch: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based); past the last phase, its final_lr."""
    for phase, n in zip(phases, phase_steps(phases, steps_per_epoch), strict=True):
        if step < n:
            return _in_phase(step, n, phase)
        step -= n
    return phases[-1].final_lr


def _in_phase(i: int, n: int, p: LRPhase) -> float:
    warm = int(p.warmup * n)
    if i < warm:
        return p.start_lr + (p.peak_lr - p.start_lr) * (i + 1) / warm
    rest = n - warm
    frac = (i - warm) / (rest - 1) if rest > 1 else 1.0  # 0 at the first decay step, 1 at the last
    if p.decay == "constant":
        return p.peak_lr
    if p.decay == "linear":
        return p.peak_lr + (p.final_lr - p.peak_lr) * frac
    return p.final_lr + 0.5 * (p.peak_lr - p.final_lr) * (1.0 + math.cos(math.pi * frac))
