"""Which trajectories an engine runs next, and for how many tokens: the rollout pool's scheduling policy.

Pure logic (no Ray, no vLLM): ``actors/rollout.py`` asks a :class:`RolloutQueue` for work whenever an
engine is idle and hands back what the engine returned. Three policies, each switchable, so that they can
be compared (``kvrl bench longtail``):

- **synchronous** (the default, and the baseline): a unit of work is ``chunk_size`` whole groups (every
  sample of each prompt), handed out in arrival order, each run to its end on the engine that took it.
  Groups that continue from an earlier rollout (partial rollouts) are dealt round-robin to the units
  (at least one per engine while they last) without counting towards ``chunk_size``: the long
  responses a partial rollout carries ride along with fresh work instead of making a round of their own.
- **divided** (Seer, arXiv 2511.14617, "divided rollout"): every sample is its own request, generated
  ``chunk_tokens`` at a time; between chunks it comes back and goes to whichever engine is idle next, so
  a few long responses end up spread over every engine instead of holding one. A call is an even share
  of the work left, dealt round the engines (every engines-th in queue order), which the engine's vLLM
  batches; it is cut at a chunk only while the work left exceeds the engines' slots (there is a queue
  to reorder), and runs to the end after.
- **context-aware** (Seer, on top of divided): one probe sample per group runs first; the group's length
  estimate is its probe's length so far (exact once the probe finishes), and the other samples then run
  longest-estimated group first, approximating longest-job-first to cut the makespan.

Partial rollouts (Kimi k1.5 sec. 2.6.2) are orthogonal: a trajectory's ``budget`` caps the tokens it may
sample in this rollout; one that spends it comes back unfinished and leaves the queue (``paused``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .trajectory import Trajectory


@dataclass
class ScheduleConfig:
    divided: bool = False  # Seer's divided rollout: per-sample requests in chunks, re-dispatched
    chunk_tokens: int = 256  # divided: tokens per chunk
    context_aware: bool = False  # Seer: a probe per group first, then longest-estimated group first

    def __post_init__(self):
        if self.chunk_tokens < 1:
            raise ValueError(f"rollout.schedule.chunk_tokens must be >= 1, got {self.chunk_tokens}")
        if self.context_aware and not self.divided:
            raise ValueError("rollout.schedule.context_aware needs rollout.schedule.divided=true")


class RolloutQueue:
    """The trajectories of one rollout, waiting, running or back. ``take`` hands out work; ``put_back``
    returns what an engine did; ``results`` gives every trajectory in the order it came in."""

    def __init__(
        self, trajectories: Sequence[Trajectory], cfg: ScheduleConfig, chunk_size: int, engines: int
    ):
        if chunk_size < 1 or engines < 1:
            raise ValueError(f"chunk_size and engines must be >= 1, got {chunk_size}, {engines}")
        self.cfg, self.chunk_size, self.engines = cfg, chunk_size, engines
        self.order = [t.key for t in trajectories]
        self.done_before = {t.key for t in trajectories if t.done}  # carried while their group goes on
        self.latest = {t.key: t for t in trajectories}
        self.waiting = [t.key for t in trajectories if not t.done and not t.paused]
        self.units: list[int] = []  # synchronous: the sizes of the units of work, in hand-out order
        if not cfg.divided:
            self.waiting, self.units = self._deal(self.waiting)
        self.running = 0
        self.capacity = 0  # the sequences an engine holds (the last take's)
        self.probes: set[str] = set()
        if cfg.context_aware:
            first: dict[str, str] = {}
            for key in self.waiting:
                first.setdefault(self.latest[key].group, key)
            self.probes = set(first.values())

    @property
    def max_new(self) -> int | None:
        """Tokens for the call just taken: a chunk when divided and the work left (waiting and running)
        exceeds what the engines hold at once, else to the end (or the budget). Re-dispatching between
        chunks only pays while there is a queue; once every sequence left has a slot, a chunk boundary
        is only a barrier and a re-prefill."""
        queued = len(self.waiting) + self.running > self.engines * self.capacity
        return self.cfg.chunk_tokens if self.cfg.divided and queued else None

    def pending(self) -> bool:
        return bool(self.waiting)

    def take(self, capacity: int) -> list[Trajectory]:
        """Work for an idle engine that can hold ``capacity`` sequences (empty when none is waiting)."""
        if not self.waiting:
            return []
        if not self.cfg.divided:
            count = self.units.pop(0)
        else:
            if self.cfg.context_aware:
                estimates = self._estimates()
                self.waiting.sort(key=lambda k: self._priority(k, estimates))
            # an even share of what is left (the engine's vLLM batches it, refilling slots as sequences
            # end), so the engines that free up next get some too
            count = max(1, math.ceil((len(self.waiting) + self.running) / self.engines))
        self.capacity = capacity
        if self.cfg.divided and len(self.waiting) > count:
            # dealt, not cut: every engines-th one, so that what clusters in the queue (the carried
            # continuations, first; the longest groups, under context-aware) is spread over the engines
            keys = self.waiting[:: self.engines][:count]
            taken = set(keys)
            self.waiting = [k for k in self.waiting if k not in taken]
        else:
            keys, self.waiting = self.waiting[:count], self.waiting[count:]
        self.running += len(keys)
        return [self.latest[k] for k in keys]

    def put_back(self, sent: Sequence[Trajectory], returned: Sequence[Trajectory] | None) -> None:
        """An engine returned ``returned`` for ``sent`` (None: it died, so ``sent`` runs again)."""
        self.running -= len(sent)
        if returned is None:
            again = [t.key for t in sent]
        else:
            again = []
            for t in returned:
                self.latest[t.key] = t
                if not t.done and not t.paused:
                    again.append(t.key)
        self.waiting[:0] = again  # work in progress first: it holds the tail
        if again and not self.cfg.divided:
            self.units.insert(0, len(again))

    def results(self) -> list[Trajectory]:
        return [self.latest[k] for k in self.order]

    def finished_here(self) -> list[Trajectory]:
        """The trajectories that finished in this rollout (not those that came in finished)."""
        return [t for t in self.results() if t.done and t.key not in self.done_before]

    def _deal(self, keys: list[str]) -> tuple[list[str], list[int]]:
        """Synchronous units: ``chunk_size`` fresh groups each, in arrival order, and the continuing
        groups dealt round-robin over them (over ``engines`` units at least, while they last)."""
        groups: dict[str, list[str]] = {}
        for key in keys:
            groups.setdefault(self.latest[key].group, []).append(key)
        fresh = [g for g, members in groups.items() if not any(self.latest[k].response_ids for k in members)]
        continuing = [g for g in groups if g not in set(fresh)]
        units = [fresh[i : i + self.chunk_size] for i in range(0, len(fresh), self.chunk_size)]
        if continuing:
            units += [[] for _ in range(min(self.engines, len(continuing)) - len(units))]
            for i, g in enumerate(continuing):
                units[i % len(units)].append(g)
        ordered = [[k for g in unit for k in groups[g]] for unit in units]
        return [k for unit in ordered for k in unit], [len(unit) for unit in ordered]

    def _priority(self, key: str, estimates: dict[str, int]) -> tuple[int, int]:
        """Probes first; then by the group's estimated length, longest first (unknown: last)."""
        if key in self.probes and not self.latest[key].response_ids:
            return (0, 0)
        return (1, -estimates[self.latest[key].group])

    def _estimates(self) -> dict[str, int]:
        """Each group's length so far: the longest response any of its samples has (its probe's, early)."""
        out: dict[str, int] = {}
        for t in self.latest.values():
            out[t.group] = max(out.get(t.group, 0), len(t.response_ids))
        return out


def rollout_metrics(
    trajectories: Sequence[Trajectory], seconds: float, slot_seconds: float, slots: int
) -> dict[str, float]:
    """What a user needs to see the long tail of one rollout (``metrics.jsonl``).

    ``trajectories``: those that finished in this rollout (``RolloutQueue.finished_here``: a partial
    rollout carries finished ones while their group's others go on). ``response_len_p50/p90/p99/max``
    over them; ``rollout_tail_s``: seconds from the moment 90% of them were done until the last one
    was; ``rollout_busy_fraction``: busy sequence-slot seconds over ``seconds * slots`` (every engine's
    ``max_num_seqs``, for the whole rollout).
    """
    done = [t for t in trajectories if t.done]
    lengths = sorted(len(t.response_ids) for t in done)
    stamps = sorted(t.finished_at for t in done if t.finished_at is not None)
    row = {
        "response_len_p50": statistics.median(lengths) if lengths else 0.0,
        "response_len_p90": _quantile(lengths, 0.9),
        "response_len_p99": _quantile(lengths, 0.99),
        "response_len_max": float(lengths[-1]) if lengths else 0.0,
        "rollout_tail_s": stamps[-1] - stamps[math.ceil(0.9 * len(stamps)) - 1] if stamps else 0.0,
        "rollout_busy_fraction": slot_seconds / (seconds * slots) if seconds > 0 and slots else 0.0,
    }
    return {k: float(v) for k, v in row.items()}


def _quantile(sorted_values: Sequence[int], q: float) -> float:
    """The nearest-rank quantile: the smallest value with at least ``q`` of the values at or below it."""
    if not sorted_values:
        return 0.0
    return float(sorted_values[max(math.ceil(q * len(sorted_values)) - 1, 0)])
