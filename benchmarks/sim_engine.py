"""The rollout-scheduling simulator's event loop: engines with vLLM's continuous batching, fed by kvrl's
own rollout queue, advanced from event to event. ``benchmarks/longtail_sim.py`` describes the model and is
the entry point (``simulate``, ``compare``)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from rollout.schedule import RolloutQueue, ScheduleConfig
from rollout.speculation import SpeculationGate
from rollout.trajectory import Trajectory

from .sim_inputs import Policy, Settings, Trace

EPS = 1e-6  # tokens: float slack when a sequence reaches its stop
SPEC_EVENT_STEPS = 8.0  # with speculation, re-read who may draft at least this often (steps)


class _Tokens:
    """A trajectory's response as the rollout queue reads it: a length (updated when its unit returns)."""

    __slots__ = ("n",)

    def __init__(self, n: int = 0):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0


@dataclass(frozen=True)
class _Request:
    """What the rollout queue reads of a request: its group name."""

    request_id: str
    seed: int = 0


@dataclass(eq=False)
class _Sample:
    """One trajectory; lives across iterations when partial rollouts carry it over."""

    group: int
    index: int  # its sample number in the group
    prompt: int
    target: int  # response tokens it ends with
    started: int = 0  # the iteration it was first scheduled in
    done: float = 0.0  # response tokens generated so far
    segment_end: float = math.inf  # partial: where this iteration's segment stops
    stop: float = math.inf  # where its current unit stops it (chunk, segment or its end)
    kv_on: int | None = None  # the engine holding its KV (None: none does)
    traj: Trajectory | None = None

    @property
    def context(self) -> float:
        return self.prompt + self.done

    @property
    def finished(self) -> bool:
        return self.done >= self.target - EPS


@dataclass(eq=False)
class _Seq:
    """A sample running on an engine until ``stop_at`` response tokens, gaining ``gain`` a step."""

    sample: _Sample
    stop_at: float
    start: float  # sample.done when it was admitted
    gain: float = 1.0
    drafts: float = 0.0  # expected drafts a step (draft_rate when it may draft)


@dataclass(eq=False)
class _Engine:
    """One vLLM instance: the unit of work it was handed, its running batch and its own queue."""

    index: int
    unit: list[Trajectory] | None = None  # the call in progress (None: idle)
    running: list[_Seq] = field(default_factory=list)  # admission order: the newest is preempted first
    waiting: deque[_Sample] = field(default_factory=deque)  # the unit's samples vLLM has not admitted
    stall_until: float = 0.0  # prefill in progress until then
    busy_s: float = 0.0
    seq_s: float = 0.0  # sequence-seconds: running sequences integrated over time
    prompts: set[int] = field(default_factory=set)  # groups whose prompt KV it caches

    @property
    def context(self) -> float:
        return sum(s.sample.context for s in self.running)


@dataclass
class IterationStats:
    makespan_s: float = 0.0
    tail_s: float = 0.0
    busy_s: float = 0.0
    seq_s: float = 0.0
    finished_tokens: int = 0
    finished_samples: int = 0
    generated_tokens: float = 0.0
    prefill_s: float = 0.0
    preemptions: int = 0
    units: int = 0  # engine calls
    chunked_units: int = 0  # of them, cut at a chunk (divided)
    seq_steps: float = 0.0
    draft_steps: float = 0.0  # sequence-steps that verified a draft
    stops: list[float] = field(default_factory=list)  # when each scheduled sample finished or paused


class Simulator:
    """Replays traces under one policy; ``run`` returns one ``IterationStats`` per iteration."""

    def __init__(self, policy: Policy, settings: Settings):
        self.p, self.s = policy, settings
        self.carried: list[_Sample] = []
        self.members: dict[int, list[_Sample]] = {}  # group -> its samples (the drafter's siblings)
        self.started: set[_Sample] = set()  # samples that have text (or are making their first token)
        self.groups = 0
        self.iteration = 0

    def run(self, traces: Sequence[Trace], drain: bool = True) -> list[IterationStats]:
        """Every trace, then (``drain``) iterations with no new prompts until nothing is carried."""
        out = [self._iteration(trace) for trace in traces]
        while drain and self.carried:
            out.append(self._iteration([]))
        return out

    # -- one iteration --

    def _iteration(self, trace: Trace) -> IterationStats:
        samples = self._schedule(trace)
        self.stats, self.engines = IterationStats(), [_Engine(i) for i in range(self.s.engines)]
        cfg = ScheduleConfig(
            divided=self.p.divided, chunk_tokens=self.s.chunk_tokens, context_aware=self.p.context_aware
        )
        self.by_key = {s.traj.key: s for s in samples}
        self.queue = RolloutQueue([s.traj for s in samples], cfg, self.s.chunk_size, self.s.engines)
        now: float | None = 0.0
        while now is not None:
            now = self._event(now)
        self.carried = [s for s in samples if not s.finished]
        self.iteration += 1
        return self._finish(len(samples))

    def _schedule(self, trace: Trace) -> list[_Sample]:
        """Carried trajectories first (the oldest), then the new groups; KV from the old weights is
        gone. Each gets its budget for this iteration (partial rollouts)."""
        samples, self.carried = sorted(self.carried, key=lambda s: s.group), []
        for group in trace:
            members = [
                _Sample(self.groups, i, group.prompt_tokens, length, started=self.iteration)
                for i, length in enumerate(group.response_tokens)
            ]
            for sample in members:
                sample.traj = Trajectory(_Request(f"g{self.groups}"), sample.index)
            self.members[self.groups] = members
            samples += members
            self.groups += 1
        last = self.s.partial_max_iterations
        for sample in samples:
            sample.kv_on = None
            budgeted = self.p.partial and self.iteration - sample.started + 1 < last
            sample.segment_end = sample.done + self.s.segment_tokens if budgeted else math.inf
            self._sync_traj(sample)
        return samples

    def _sync_traj(self, sample: _Sample) -> None:
        """What the queue sees of a sample: its length, finished or not, its budget left."""
        t = sample.traj
        t.response_ids = _Tokens(round(sample.done))
        t.finish_reason = "stop" if sample.finished else None
        t.budget = None if sample.segment_end == math.inf else max(0, round(sample.segment_end - sample.done))

    def _event(self, now: float) -> float | None:
        """Dispatch, then advance every engine to the next event; None when the iteration is over."""
        self._dispatch(now)
        for engine in self.engines:
            self._set_gains(engine)
        events = [self._next(e, now) for e in self.engines]
        dt = min(t for t, _ in events)
        if dt == math.inf:
            if self.queue.pending() or any(e.unit for e in self.engines):
                raise RuntimeError("work is left that no engine can admit (does the KV pool hold it?)")
            return None
        for engine, (t, steps) in zip(self.engines, events, strict=True):
            self._advance(engine, now, dt, steps if t == dt else None)
        now += dt
        for engine in self.engines:
            self._settle(engine, now)
        return now

    def _finish(self, scheduled: int) -> IterationStats:
        st = self.stats
        st.stops.sort()
        st.makespan_s = st.stops[-1] if st.stops else 0.0
        # the tail: from when 90% of this iteration's samples are done (or paused) to the last
        st.tail_s = st.makespan_s - st.stops[math.ceil(0.9 * len(st.stops)) - 1] if st.stops else 0.0
        st.busy_s = sum(e.busy_s for e in self.engines)
        st.seq_s = sum(e.seq_s for e in self.engines)
        return st

    # -- dispatch: the rollout pool's loop --

    def _dispatch(self, now: float) -> None:
        for engine in self.engines:  # RolloutPool: idle engines in index order take the next unit
            if engine.unit is None and self.queue.pending():
                unit = self.queue.take(self.s.max_num_seqs)
                chunk = self.queue.max_new
                self.stats.units += 1
                self.stats.chunked_units += chunk is not None
                engine.unit = unit
                overhead = self.s.call_s + self.s.call_request_s * len(unit)
                engine.stall_until = max(engine.stall_until, now) + overhead
                for t in unit:
                    sample = self.by_key[t.key]
                    sample.stop = min(sample.target, sample.segment_end, sample.done + (chunk or math.inf))
                    engine.waiting.append(sample)
            while engine.waiting and self._fits(engine, engine.waiting[0]):
                self._start(engine, engine.waiting.popleft(), now)

    def _fits(self, engine: _Engine, sample: _Sample) -> bool:
        """vLLM admits a sequence when its context and this step's new tokens of all fit in the pool."""
        room = self.s.kv_pool_tokens - engine.context - (len(engine.running) + 1)
        return len(engine.running) < self.s.max_num_seqs and sample.context <= room

    def _start(self, engine: _Engine, sample: _Sample, now: float) -> None:
        prefill = self.s.cost.prefill_s(self._cached(engine, sample), sample.context)
        engine.stall_until = max(engine.stall_until, now) + prefill
        self.stats.prefill_s += prefill
        engine.prompts.add(sample.group)
        sample.kv_on = engine.index
        self.started.add(sample)
        engine.running.append(_Seq(sample, sample.stop, sample.done))

    def _cached(self, engine: _Engine, sample: _Sample) -> float:
        """Tokens of the sample's context whose KV the engine already has (or fetches: global cache)."""
        if sample.kv_on == engine.index or (self.s.global_kv_cache and sample.kv_on is not None):
            return sample.context
        shared = self.s.global_kv_cache and any(sample.group in e.prompts for e in self.engines)
        return sample.prompt if shared or sample.group in engine.prompts else 0.0

    # -- speculation: who drafts --

    def _set_gains(self, engine: _Engine) -> None:
        limit = self.s.spec_max_batch
        drafting = self.p.speculative and (limit <= 0 or len(engine.running) <= limit)
        rate = self.s.draft_rate * (self._gate_share(engine) if drafting and self.s.spec_adaptive else 1.0)
        started = self.started
        for seq in engine.running:
            sibling = drafting and any(
                o is not seq.sample and o in started for o in self.members[seq.sample.group]
            )
            seq.drafts = rate if sibling else 0.0
            seq.gain = 1.0 + seq.drafts * self.s.accepted_per_draft

    def _gate_share(self, engine: _Engine) -> float:
        """The share of steps the engine's ``SpeculationGate`` drafts at this batch: most of them where
        a drafting step yields more tokens per second than a plain one (by the cost model), else only
        its exploring ones."""
        n, s = len(engine.running), self.s
        drafts = s.draft_rate * n
        plain = n / s.cost.step_s(n, engine.context)
        spec = (n + drafts * s.accepted_per_draft) / s.cost.step_s(
            n, engine.context, drafts, drafts * s.draft_tokens
        )
        explore = 1.0 / SpeculationGate.explore_every
        return 1.0 - explore if spec > plain else explore

    # -- time --

    def _next(self, engine: _Engine, now: float) -> tuple[float, float]:
        """(seconds, decode steps) until the engine's next event: a prefill ends, a sequence reaches its
        stop, the running sequences fill the KV pool, or (speculating) who drafts is read again."""
        if engine.stall_until > now:
            return engine.stall_until - now, 0.0
        if not engine.running:
            return math.inf, 0.0
        steps = min((s.stop_at - s.sample.done) / s.gain for s in engine.running)
        added = sum(s.gain for s in engine.running)
        steps = max(0.0, min(steps, (self.s.kv_pool_tokens - engine.context) / added))
        if self.p.speculative:
            steps = min(steps, SPEC_EVENT_STEPS)
        t0, growth = self._step(engine)
        return steps * t0 + growth * steps * (steps - 1) / 2, steps

    def _step(self, engine: _Engine) -> tuple[float, float]:
        """The engine's step time now and its increase per step (the KV of the tokens added), seconds."""
        cost, running = self.s.cost, engine.running
        drafts = sum(s.drafts for s in running)
        t0 = cost.step_s(len(running), engine.context, drafts, drafts * self.s.draft_tokens)
        factor = t0 / cost.step_s(len(running), engine.context) if drafts else 1.0
        return t0, cost.kv_s * sum(s.gain for s in running) * factor

    def _advance(self, engine: _Engine, now: float, dt: float, steps: float | None) -> None:
        if engine.running or engine.stall_until > now:
            engine.busy_s += dt
        engine.seq_s += dt * len(engine.running)
        if engine.stall_until > now or not engine.running:
            return
        if steps is None:  # not this engine's event: the (fractional) steps that fit in dt
            t0, growth = self._step(engine)
            steps = _steps_within(dt, t0, growth)
        self.stats.seq_steps += steps * len(engine.running)
        for seq in engine.running:
            self.stats.draft_steps += steps * seq.drafts
            seq.sample.done = min(seq.stop_at, seq.sample.done + steps * seq.gain)

    def _settle(self, engine: _Engine, now: float) -> None:
        for seq in [s for s in engine.running if s.stop_at - s.sample.done <= EPS]:
            engine.running.remove(seq)
            seq.sample.done = seq.stop_at
            self.stats.generated_tokens += seq.stop_at - seq.start
            self._stopped(seq.sample, now)
        while engine.running and self._overfull(engine):
            self._preempt(engine, engine.running.pop())
        if engine.unit is not None and not engine.running and not engine.waiting:
            for t in engine.unit:  # the call returns: the queue sees what it did
                self._sync_traj(self.by_key[t.key])
            self.queue.put_back(engine.unit, engine.unit)
            engine.unit = None

    def _overfull(self, engine: _Engine) -> bool:
        """The next step's tokens do not fit in the KV pool: vLLM preempts."""
        added = sum(s.gain for s in engine.running)
        return engine.context + added > self.s.kv_pool_tokens + EPS

    def _stopped(self, sample: _Sample, now: float) -> None:
        if sample.finished:
            self.stats.stops.append(now)
            self.stats.finished_tokens += sample.target
            self.stats.finished_samples += 1
        elif sample.done >= sample.segment_end - EPS:
            self.stats.stops.append(now)  # paused: carried to the next iteration

    def _preempt(self, engine: _Engine, seq: _Seq) -> None:
        """vLLM's recompute preemption: the KV is freed, the sequence waits to be prefilled again."""
        self.stats.preemptions += 1
        self.stats.generated_tokens += seq.sample.done - seq.start
        seq.sample.kv_on = None
        engine.waiting.appendleft(seq.sample)


def _steps_within(dt: float, t0: float, growth: float) -> float:
    """Solve m t0 + growth m (m - 1) / 2 = dt for m >= 0 (time of m steps whose time grows linearly)."""
    b = t0 - growth / 2
    return 2 * dt / (b + math.sqrt(b * b + 2 * growth * dt))
