"""Trace-driven simulation of RL rollout scheduling: how much of the long tail each policy removes.

Input: per iteration, a trace of groups (one prompt, its n samples), each with the prompt length and the
response length of every sample in tokens, as a policy actually sampled them. The simulator replays the
trace on E vLLM engines under several scheduling policies and reports rollout throughput, tail time,
makespan and engine busy fraction. Pure Python: no torch, no vLLM, no Ray. The engines' step and prefill
times come from a cost model (``benchmarks/sim_cost.py``): Kimi-VL-A3B on H100s, or this machine's CPU
engine fitted to measured calls, against which the simulator is first checked
(``benchmarks.longtail.sim_report``).

The scheduling is kvrl's own, not an idealisation of it: the simulated pool asks the rollout queue
(``rollout.schedule.RolloutQueue``, the class ``actors/rollout.py`` uses) for a unit of work whenever an
engine is idle, runs it with vLLM's continuous batching (``max_num_seqs`` slots, first come first served,
admitted while the KV pool holds them), and hands it back when every sequence of the unit has finished,
reached its chunk's end or spent its partial-rollout budget: a unit is a barrier, as an engine call is. So
``sync`` is whole groups, ``chunk_size`` to a unit; ``divided`` is Seer's divided rollout as kvrl implements
it (an even share of the waiting samples per unit, dealt every engines-th, cut at ``chunk_tokens`` while the
work left exceeds the engines' slots); ``context_aware`` orders that queue by the implemented estimate (probes
first, then each group's longest response so far); ``partial`` caps a trajectory at ``segment_tokens`` per
iteration and carries the rest to the next, on new weights, its context recomputed; after the last trace,
iterations with no new prompts finish what is carried, their time charged (as ``kvrl bench longtail`` does).

Grouped speculative decoding follows the real drafter's rules: a sequence may draft only while its
engine runs at most ``spec_max_batch`` sequences (vLLM's ``num_speculative_tokens_per_batch_size``; 0:
any batch) and a sibling of its group has text (the drafter proposes a sibling's continuation of a
matching suffix, and nothing where no sibling has any); of the sequence-steps allowed to draft, a share
``draft_rate`` finds a match; a draft has ``draft_tokens`` tokens of which ``accepted_per_draft`` are
accepted, so such a sequence gains 1 + ``draft_rate`` x ``accepted_per_draft`` tokens a step on
average. With ``spec_adaptive`` (``rollout.speculative_adaptive``, ``SpeculationGate``) the engine
drafts on most steps where a drafting step yields more tokens per second than a plain one, by the cost
model at the current batch, and on one step in ``explore_every`` where it yields fewer. The three
rates are measured (``kvrl bench longtail``), or labelled assumed where they were not.
A unit of work costs its engine ``call_s`` + ``call_request_s`` per request before it runs (the call's
overhead outside the engine's steps, measured the same way).

Time advances from event to event (a sequence reaches its stop, a prefill ends, the pool fills, a
drafter's eligibility is re-read); between events every engine's batch is fixed and its step time grows
by kv x (tokens added) per step, so m steps take m t0 + growth m (m - 1) / 2 exactly, and engines that
are not at an event advance by fractional steps.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rollout.schedule import RolloutQueue, ScheduleConfig
from rollout.speculation import SpeculationGate
from rollout.trajectory import Trajectory

from .sim_cost import KV_BYTES_PER_TOKEN, KV_POOL_TOKENS, CostModel, kimi_vl_a3b_cost, tokens_per_step

__all__ = [
    "KV_BYTES_PER_TOKEN",
    "KV_POOL_TOKENS",
    "POLICIES",
    "CostModel",
    "Group",
    "Policy",
    "Settings",
    "compare",
    "describe_trace",
    "kimi_vl_a3b_cost",
    "load_traces",
    "simulate",
    "synthetic_trace",
    "synthetic_traces",
    "tokens_per_step",
]

EPS = 1e-6  # tokens: float slack when a sequence reaches its stop
SPEC_EVENT_STEPS = 8.0  # with speculation, re-read who may draft at least this often (steps)


@dataclass(frozen=True)
class Group:
    """One prompt and its n samples: the prompt's length and each sample's response length (tokens)."""

    prompt_tokens: int
    response_tokens: tuple[int, ...]

    def __post_init__(self):
        if self.prompt_tokens < 0 or not self.response_tokens or min(self.response_tokens) < 1:
            raise ValueError(f"a group needs prompt_tokens >= 0 and response lengths >= 1, got {self}")


Trace = Sequence[Group]  # one iteration's groups, in the order the driver submits them


Trace = Sequence[Group]  # one iteration's groups, in the order the driver submits them


@dataclass(frozen=True)
class Settings:
    """The cluster and the knobs; defaults are configs/kimi-vl-a3b/rl-1x8.yaml and kvrl plan on it."""

    engines: int = 2  # resources.rollout_actors
    max_num_seqs: int = 64  # rollout.max_num_seqs
    kv_pool_tokens: int = KV_POOL_TOKENS
    chunk_size: int = 8  # rollout.chunk_size: groups per unit of work of the synchronous pool
    chunk_tokens: int = 4096  # divided: Seer's chunks are "a few thousand" tokens (REFERENCES.md)
    segment_tokens: int = 8192  # partial: half of max_tokens 16384, so a trajectory spans <= 2 iterations
    partial_max_iterations: int = 8  # rollout.partial.max_iterations: the last one has no budget
    draft_tokens: float = 3.0  # speculative: tokens per draft (assumed unless measured)
    accepted_per_draft: float = tokens_per_step(0.5, 3) - 1.0  # assumed: i.i.d. acceptance 0.5
    draft_rate: float = 1.0  # share of the sequence-steps allowed to draft that find a match (assumed)
    spec_max_batch: int = 0  # speculative: draft only at batches up to this (0: any)
    spec_adaptive: bool = False  # speculative: a gate drafts where drafting pays (see below)
    call_s: float = 0.0  # per unit of work (an engine call): its fixed overhead before it runs
    call_request_s: float = 0.0  # per request of a unit (building, tokenizing, returning it)
    global_kv_cache: bool = True  # Seer's Mooncake pool: continuations skip recompute on any engine
    cost: CostModel = field(default_factory=kimi_vl_a3b_cost)


@dataclass(frozen=True)
class Policy:
    """A scheduling policy as the features it turns on."""

    name: str
    divided: bool = False  # per-sample requests in chunk_tokens chunks, re-dispatched (Seer)
    context_aware: bool = False  # a probe per group, then longest estimated group first (Seer)
    partial: bool = False  # at most segment_tokens per trajectory per iteration (Kimi k1.5)
    speculative: bool = False  # grouped speculative decoding (Seer)


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in [
        Policy("sync"),
        Policy("divided", divided=True),
        Policy("context_aware", divided=True, context_aware=True),
        Policy("partial", partial=True),
        Policy("speculative", speculative=True),
        Policy("all", divided=True, context_aware=True, partial=True, speculative=True),
    ]
}


# ---- traces ----


def synthetic_trace(
    groups: int,
    n: int,
    seed: int,
    *,
    median: float = 4096,
    p99: float = 24576,
    group_share: float = 0.6,
    max_tokens: int = 16384,
    prompt_tokens: tuple[int, int] = (256, 4096),
) -> list[Group]:
    """Heavy-tailed (log-normal) response lengths, correlated within each group.

    log(length) = log(median) + group effect + sample effect, normal, with total standard deviation
    sigma = log(p99 / median) / z_0.99 (so ``p99`` is the untruncated 99th percentile) and a share
    ``group_share`` of its variance between groups (Seer: samples of a prompt have similar lengths; 0.6
    is an assumption: ``describe_trace`` measures it on a real trace). Lengths are clipped to
    [1, max_tokens] as the engine truncates them; prompts are uniform in ``prompt_tokens`` (text + image
    tokens; rl-1x8.yaml budgets up to 4K).
    """
    rng = random.Random(seed)
    sigma = math.log(p99 / median) / statistics.NormalDist().inv_cdf(0.99)
    between, within = sigma * math.sqrt(group_share), sigma * math.sqrt(1.0 - group_share)
    trace = []
    for _ in range(groups):
        mu = math.log(median) + between * rng.gauss(0.0, 1.0)
        lengths = (
            min(max_tokens, max(1, round(math.exp(mu + within * rng.gauss(0.0, 1.0))))) for _ in range(n)
        )
        trace.append(Group(rng.randint(*prompt_tokens), tuple(lengths)))
    return trace


def synthetic_traces(iterations: int, groups: int, n: int, seed: int, **kwargs) -> list[list[Group]]:
    """``iterations`` independent synthetic traces (seeds seed, seed+1, ...)."""
    return [synthetic_trace(groups, n, seed + i, **kwargs) for i in range(iterations)]


def load_traces(path: str | Path) -> list[list[Group]]:
    """Traces from JSON lines ``{"iteration": i, "prompt_tokens": p, "response_tokens": [l1, ..., ln]}``,
    one line per group, groups in submission order within an iteration."""
    by_iteration: dict[int, list[Group]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            group = Group(int(row["prompt_tokens"]), tuple(int(x) for x in row["response_tokens"]))
            by_iteration.setdefault(int(row["iteration"]), []).append(group)
    return [by_iteration[i] for i in sorted(by_iteration)]


def describe_trace(trace: Trace) -> dict[str, float]:
    """Response-length statistics (tokens) and the between-group share of log-length variance."""
    lengths = sorted(x for g in trace for x in g.response_tokens)
    logs = [[math.log(x) for x in g.response_tokens] for g in trace]
    grand = statistics.fmean(x for row in logs for x in row)
    total = statistics.fmean((x - grand) ** 2 for row in logs for x in row)
    between = statistics.fmean((statistics.fmean(row) - grand) ** 2 for row in logs)
    return {
        "samples": len(lengths),
        "median": statistics.median(lengths),
        "p99": lengths[min(len(lengths) - 1, math.ceil(0.99 * len(lengths)) - 1)],
        "max": lengths[-1],
        "mean": statistics.fmean(lengths),
        "group_share": between / total if total > 0 else 0.0,
    }


# ---- simulation state ----


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
class _IterationStats:
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


class _Simulator:
    """Replays traces under one policy; ``run`` returns one ``_IterationStats`` per iteration."""

    def __init__(self, policy: Policy, settings: Settings):
        self.p, self.s = policy, settings
        self.carried: list[_Sample] = []
        self.members: dict[int, list[_Sample]] = {}  # group -> its samples (the drafter's siblings)
        self.started: set[_Sample] = set()  # samples that have text (or are making their first token)
        self.groups = 0
        self.iteration = 0

    def run(self, traces: Sequence[Trace], drain: bool = True) -> list[_IterationStats]:
        """Every trace, then (``drain``) iterations with no new prompts until nothing is carried."""
        out = [self._iteration(trace) for trace in traces]
        while drain and self.carried:
            out.append(self._iteration([]))
        return out

    # -- one iteration --

    def _iteration(self, trace: Trace) -> _IterationStats:
        samples = self._schedule(trace)
        self.stats, self.engines = _IterationStats(), [_Engine(i) for i in range(self.s.engines)]
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

    def _finish(self, scheduled: int) -> _IterationStats:
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


# ---- public API ----


def simulate(
    traces: Sequence[Trace], policy: str | Policy, settings: Settings | None = None, drain: bool = True
) -> dict:
    """Replay ``traces`` (one per iteration) under ``policy``; every time in seconds, lengths in tokens.

    Returns throughput (finished responses' tokens / simulated seconds over all iterations, the drain
    included), the per-iteration makespans, the tail (seconds from 90% of an iteration's samples done or
    paused to the last, averaged over the traces' iterations), the engines' busy fraction (time with a
    sequence running or a prefill) and occupancy (running sequences / max_num_seqs, time-averaged), and
    which techniques acted: the share of units cut at a chunk and of sequence-steps that drafted.

    ``drain`` (default): after the traces, iterations with no new prompts finish what partial rollouts
    carry, so every policy finishes the same responses; without it that work is left in flight."""
    settings = settings or Settings()
    policy = POLICIES[policy] if isinstance(policy, str) else policy
    _check(traces, settings)
    sim = _Simulator(policy, settings)
    its = sim.run(traces, drain)
    seconds = sum(st.makespan_s for st in its)
    finished = sum(st.finished_tokens for st in its)
    units = sum(st.units for st in its)
    return {
        "policy": policy.name,
        "iterations": len(its),
        "seconds": seconds,
        "throughput_tokens_per_s": _rate(its, "finished_tokens"),
        "generated_tokens_per_s": _rate(its, "generated_tokens"),
        "finished_tokens": finished,
        "finished_samples": sum(st.finished_samples for st in its),
        "unfinished_samples": len(sim.carried),
        "unfinished_tokens": sum(s.done for s in sim.carried),
        "makespan_s": [st.makespan_s for st in its],
        "tail_s": statistics.fmean(st.tail_s for st in its[: len(traces)]),
        "tail_s_per_iteration": [st.tail_s for st in its],
        "busy_fraction": sum(st.busy_s for st in its) / (settings.engines * seconds) if seconds else 0.0,
        "occupancy": _rate(its, "seq_s") / (settings.engines * settings.max_num_seqs),
        "prefill_s": sum(st.prefill_s for st in its),
        "preemptions": sum(st.preemptions for st in its),
        "active": {
            "divided_chunked_calls": sum(st.chunked_units for st in its) / max(units, 1),
            "speculative_draft_steps": sum(st.draft_steps for st in its)
            / max(sum(st.seq_steps for st in its), 1e-9),
        },
    }


def compare(
    traces: Sequence[Trace], settings: Settings | None = None, policies: Iterable[str] = POLICIES
) -> dict[str, dict]:
    """``simulate`` every policy on the same traces, with ratios against ``sync``: throughput (> 1 is
    better), tail and mean makespan (< 1 is better)."""
    results = {name: simulate(traces, name, settings) for name in dict.fromkeys(["sync", *policies])}
    base = results["sync"]
    for r in results.values():
        r["throughput_vs_sync"] = r["throughput_tokens_per_s"] / base["throughput_tokens_per_s"]
        r["tail_vs_sync"] = r["tail_s"] / base["tail_s"] if base["tail_s"] else math.nan
        r["makespan_vs_sync"] = statistics.fmean(r["makespan_s"]) / statistics.fmean(base["makespan_s"])
    return results


def _rate(its: Sequence[_IterationStats], what: str) -> float:
    """``what`` per simulated second over these iterations."""
    seconds = sum(st.makespan_s for st in its)
    return sum(getattr(st, what) for st in its) / seconds if seconds else 0.0


def _check(traces: Sequence[Trace], settings: Settings) -> None:
    if not traces or not all(traces):
        raise ValueError("simulate needs at least one iteration and a group in each")
    longest = max(g.prompt_tokens + max(g.response_tokens) for trace in traces for g in trace)
    if longest + 1 > settings.kv_pool_tokens:
        raise ValueError(f"a {longest}-token sequence does not fit a {settings.kv_pool_tokens}-token KV pool")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.longtail_sim``: compare the policies on a synthetic or measured trace."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, help="JSON lines (load_traces); default: a synthetic trace")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--groups", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--p99", type=float, default=24576)
    ap.add_argument("--engines", type=int, default=Settings.engines)
    ap.add_argument("--no-global-kv-cache", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    traces = (
        load_traces(args.trace)
        if args.trace
        else synthetic_traces(
            args.iterations, args.groups, args.n, args.seed, max_tokens=args.max_tokens, p99=args.p99
        )
    )
    settings = Settings(engines=args.engines, global_kv_cache=not args.no_global_kv_cache)
    out = {"settings": asdict(settings), "trace": describe_trace([g for t in traces for g in t])}
    out["policies"] = compare(traces, settings)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
