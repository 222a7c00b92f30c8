"""Curriculum schedules (Kimi-VL sec. 2.4, Kimi k1.5 sec. 2.3.4) and their composition with prioritization.

Difficulty is a number in [0, 1] per problem: 0 = the model always solves it, 1 = never (see
``curriculum.difficulty``). A schedule decides, per iteration, which problems are in the pool; the
prioritized sampler then chooses within the pool.

- ``uniform_then_hard`` (k1.5): every problem until ``switch_iteration``, then only problems with
  difficulty >= ``hard_threshold``.
- ``staged``: stage k covers iterations [stages[k-1].until, stages[k].until) and admits problems with
  difficulty <= ``stages[k].max_difficulty`` (easy -> hard); the last stage runs on forever.
- ``smooth``: the admitted maximum difficulty grows linearly from ``start_difficulty`` to 1 over
  ``ramp_iterations``.
- ``none``: every problem, always.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .prioritized import PrioritizedSampler

log = logging.getLogger(__name__)


@dataclass
class Stage:
    max_difficulty: float
    until_iteration: int | None = None  # None: the last stage


@dataclass
class CurriculumConfig:
    schedule: Literal["none", "uniform_then_hard", "staged", "smooth"] = "none"
    switch_iteration: int = 0
    hard_threshold: float = 0.5
    stages: list[Stage] = field(default_factory=list)
    start_difficulty: float = 0.3
    ramp_iterations: int = 10
    # prioritized sampling within the pool
    prioritized: bool = True
    floor: float = 0.05
    prior: float = 0.0
    ema: float | None = None

    def __post_init__(self):
        if self.schedule == "staged":
            if not self.stages:
                raise ValueError("schedule 'staged' needs at least one stage")
            ends = [s.until_iteration for s in self.stages[:-1]]
            if any(e is None for e in ends) or ends != sorted(ends):
                raise ValueError("stages: every stage but the last needs an increasing until_iteration")
            for s in self.stages:
                if not 0.0 <= s.max_difficulty <= 1.0:
                    raise ValueError(f"stages: max_difficulty {s.max_difficulty} is not in [0, 1]")
        for name in ("hard_threshold", "start_difficulty", "floor", "prior"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.ramp_iterations < 1:
            raise ValueError(f"ramp_iterations must be >= 1, got {self.ramp_iterations}")


def stage_index(cfg: CurriculumConfig, iteration: int) -> int:
    """Which stage of a staged schedule ``iteration`` is in (0-based)."""
    for k, s in enumerate(cfg.stages):
        if s.until_iteration is None or iteration < s.until_iteration:
            return k
    return len(cfg.stages) - 1


def admitted(cfg: CurriculumConfig, difficulty: np.ndarray, iteration: int) -> np.ndarray:
    """(num_items,) bool mask of the problems in this iteration's pool."""
    if cfg.schedule == "none":
        return np.ones(len(difficulty), dtype=bool)
    if cfg.schedule == "uniform_then_hard":
        if iteration < cfg.switch_iteration:
            return np.ones(len(difficulty), dtype=bool)
        return difficulty >= cfg.hard_threshold
    if cfg.schedule == "staged":
        return difficulty <= cfg.stages[stage_index(cfg, iteration)].max_difficulty
    frac = min(1.0, iteration / cfg.ramp_iterations)
    return difficulty <= cfg.start_difficulty + (1.0 - cfg.start_difficulty) * frac


class CurriculumSampler:
    """Curriculum (which problems) composed with prioritized sampling (which of them, how often)."""

    def __init__(self, difficulty: Sequence[float], cfg: CurriculumConfig, seed: int = 0):
        self.difficulty = np.asarray(difficulty, dtype=np.float64)
        if self.difficulty.ndim != 1 or not len(self.difficulty):
            raise ValueError("difficulty must be a non-empty 1-D sequence")
        if np.isnan(self.difficulty).any() or (self.difficulty < 0).any() or (self.difficulty > 1).any():
            raise ValueError("difficulty values must be numbers in [0, 1]")
        self.cfg = cfg
        self.prioritized = PrioritizedSampler(
            len(self.difficulty),
            seed=seed,
            floor=cfg.floor if cfg.prioritized else 1.0,
            prior=cfg.prior,
            ema=cfg.ema,
        )

    def pool(self, iteration: int, n: int) -> np.ndarray:
        """Ids admitted at ``iteration``; if fewer than n, topped up with the easiest others (logged)."""
        mask = admitted(self.cfg, self.difficulty, iteration)
        ids = np.flatnonzero(mask)
        if len(ids) < n:
            order = np.argsort(self.difficulty, kind="stable")
            extra = [i for i in order if not mask[i]][: n - len(ids)]
            log.warning(
                "curriculum pool at iteration %d has %d problems for a batch of %d; adding the "
                "%d easiest others",
                iteration,
                len(ids),
                n,
                len(extra),
            )
            ids = np.sort(np.concatenate([ids, np.asarray(extra, dtype=np.int64)]))
        return ids

    def sample(self, n: int, iteration: int) -> list[int]:
        return self.prioritized.sample(n, self.pool(iteration, n))

    def update(self, ids: Sequence[int], successes: Sequence[float]) -> None:
        self.prioritized.update(ids, successes)

    def metrics(self, batch: Sequence[int], iteration: int, bins: int = 5) -> dict[str, float]:
        """Mean s_i (over problems seen so far), problems at s = 1, pool size, the batch's difficulty
        histogram (``difficulty_hist/<lo>-<hi>``: counts) and, for staged schedules, the stage."""
        rates, seen = self.prioritized.success_rates, self.prioritized.seen
        hist, edges = np.histogram(
            self.difficulty[np.asarray(batch, dtype=np.int64)], bins=bins, range=(0, 1)
        )
        out = {
            "success_rate_mean": float(rates[seen].mean()) if seen.any() else math.nan,
            "solved_problems": int((rates[seen] >= 1.0).sum()),
            "pool_size": int(admitted(self.cfg, self.difficulty, iteration).sum()),
        }
        for count, lo, hi in zip(hist, edges[:-1], edges[1:], strict=True):
            out[f"difficulty_hist/{lo:.1f}-{hi:.1f}"] = int(count)
        if self.cfg.schedule == "staged":
            out["curriculum_stage"] = stage_index(self.cfg, iteration)
        return out

    def state_dict(self) -> dict:
        return {"prioritized": self.prioritized.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.prioritized.load_state_dict(state["prioritized"])
