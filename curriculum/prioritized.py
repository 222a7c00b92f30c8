"""Prioritized sampling by per-problem success rate (Kimi k1.5, sec. 2.3.4).

Each problem i keeps a success rate s_i from the rollouts it has had; problems are drawn with
probability proportional to max(1 - s_i, floor), so the model keeps practising what it fails.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)


class PrioritizedSampler:
    """Draws distinct problem ids with probability proportional to max(1 - s_i, floor).

    Args:
        num_items: problems are ids 0 .. num_items - 1.
        seed: seeds the sampler's own generator (its state is part of ``state_dict``).
        floor: minimum weight, so solved problems (s_i = 1) are still drawn now and then when > 0.
        prior: s_i of a problem that has no rollouts yet.
        ema: None keeps s_i as the running mean of all outcomes; a value a in (0, 1] keeps an
            exponential moving average, s_i <- (1 - a) s_i + a * (mean outcome of this update).
    """

    def __init__(
        self, num_items: int, seed: int = 0, floor: float = 0.0, prior: float = 0.0, ema: float | None = None
    ):
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {floor}")
        if not 0.0 <= prior <= 1.0:
            raise ValueError(f"prior must be in [0, 1], got {prior}")
        if ema is not None and not 0.0 < ema <= 1.0:
            raise ValueError(f"ema must be in (0, 1] or None, got {ema}")
        self.num_items, self.floor, self.prior, self.ema = num_items, floor, prior, ema
        self._rng = np.random.default_rng(seed)
        self._rate = np.full(num_items, prior, dtype=np.float64)  # s_i
        self._count = np.zeros(num_items, dtype=np.int64)  # outcomes seen per problem

    @property
    def success_rates(self) -> np.ndarray:
        """(num_items,) copy of s_i."""
        return self._rate.copy()

    @property
    def seen(self) -> np.ndarray:
        """(num_items,) bool: problems with at least one outcome."""
        return self._count > 0

    def update(self, ids: Sequence[int], successes: Sequence[float]) -> None:
        """Record per-sample 0/1 outcomes; ``ids[j]`` is the problem of sample j (repeats allowed)."""
        if len(ids) != len(successes):
            raise ValueError(f"{len(ids)} ids but {len(successes)} outcomes")
        outcomes: dict[int, list[float]] = defaultdict(list)
        for i, s in zip(ids, successes, strict=True):
            i = int(i)
            if not 0 <= i < self.num_items:
                raise ValueError(f"problem id {i} out of range [0, {self.num_items})")
            s = float(s)
            if not 0.0 <= s <= 1.0:
                raise ValueError(f"outcome {s} for problem {i} is not in [0, 1]")
            outcomes[i].append(s)
        for i, vals in outcomes.items():
            n, mean = len(vals), float(np.mean(vals))
            if self._count[i] == 0:
                self._rate[i] = mean
            elif self.ema is None:
                self._rate[i] = (self._rate[i] * self._count[i] + mean * n) / (self._count[i] + n)
            else:
                self._rate[i] = (1 - self.ema) * self._rate[i] + self.ema * mean
            self._count[i] += n

    def weights(self, pool: Sequence[int] | None = None) -> np.ndarray:
        """Unnormalized weights max(1 - s_i, floor) of ``pool`` (default: all problems)."""
        rates = self._rate if pool is None else self._rate[np.asarray(pool, dtype=np.int64)]
        return np.maximum(1.0 - rates, self.floor)

    def sample(self, n: int, pool: Sequence[int] | None = None) -> list[int]:
        """n distinct ids from ``pool`` (default all), each drawn with probability ∝ its weight.

        If fewer than n problems have a positive weight, all of those are taken and the rest are
        drawn uniformly from the zero-weight ones (logged), so a batch is always full.
        """
        candidates = np.arange(self.num_items) if pool is None else np.asarray(pool, dtype=np.int64)
        if n > len(candidates):
            raise ValueError(f"cannot draw {n} distinct problems from a pool of {len(candidates)}")
        if n <= 0:
            return []
        w = self.weights(candidates)
        positive = np.flatnonzero(w > 0)
        if len(positive) >= n:
            picked = self._rng.choice(positive, size=n, replace=False, p=w[positive] / w[positive].sum())
        else:
            zero = np.flatnonzero(w <= 0)
            extra = self._rng.choice(zero, size=n - len(positive), replace=False)
            log.info(
                "only %d problems have positive weight; %d drawn uniformly among solved ones",
                len(positive),
                len(extra),
            )
            picked = np.concatenate([positive, extra])
        return [int(candidates[i]) for i in picked]

    def state_dict(self) -> dict:
        return {
            "num_items": self.num_items,
            "floor": self.floor,
            "prior": self.prior,
            "ema": self.ema,
            "rate": self._rate.tolist(),
            "count": self._count.tolist(),
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["num_items"] != self.num_items:
            raise ValueError(f"state is for {state['num_items']} problems, this sampler has {self.num_items}")
        self.floor, self.prior, self.ema = state["floor"], state["prior"], state["ema"]
        self._rate = np.asarray(state["rate"], dtype=np.float64)
        self._count = np.asarray(state["count"], dtype=np.int64)
        self._rng.bit_generator.state = state["rng"]
