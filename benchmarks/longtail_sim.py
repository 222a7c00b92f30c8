"""Trace-driven simulation of RL rollout scheduling: how much of the long tail each policy removes.

Input: per iteration, a trace of groups (one prompt, its n samples), each with the prompt length and the
response length of every sample in tokens, as a policy actually sampled them. The simulator replays the
trace on E vLLM engines under several scheduling policies and reports rollout throughput, tail time,
makespan and engine busy fraction. Pure Python: no torch, no vLLM, no Ray.

Cost model (one engine = one vLLM instance over TP GPUs; every number below is in ``kimi_vl_a3b_cost``)
------------------------------------------------------------------------------------------------------
A decode step of B running sequences whose cached contexts total S tokens is memory-bound: it reads the
weights once and every cached token's KV once, so

    t(B, S) = fixed + dense + routed * coverage(B) + seq * B + kv * S                         (seconds)

nearly flat in B (the batch rides on one weight read) until the KV pool or ``max_num_seqs`` caps B.

- Model (``kvrl plan`` arithmetic, ``actors.plan.model_shape`` on configs/kimi-vl-a3b/model_config.json):
  16,407,654,384 parameters, of which the vision tower + projector 447,545,840 (runs at prefill only) and
  the routed experts 14,394,851,328 = 26 MoE layers (first_k_dense_replace=1 of 27) x 64 experts x 3 x
  2048 x 1408. The input embedding 163,840 x 2,048 = 335,544,320 is a table lookup (a step reads B rows).
  What every step reads: 16,407,654,384 - 447,545,840 - 14,394,851,328 - 335,544,320 = 1,229,712,896
  parameters (attention, shared experts, the dense layer, norms, lm_head), bf16 (2 bytes).
- MoE coverage: each token picks 6 of 64 routed experts per layer; with T tokens in a step and routing
  independent across tokens, the expected share of experts read is 1 - (1 - 6/64)^T (vLLM's fused-MoE
  kernel skips experts that got no token). T=1 reads 9.4% of them (the "2.9 B active" of the model card);
  T=64 reads 99.8%, so a full batch reads about all 16 B language-model parameters, not 3 B. Correlated
  routing would read fewer: this is an upper bound on the weight read.
- TP = 2 (``rollout.tensor_parallel_size`` in configs/kimi-vl-a3b/rl-1x8.yaml): each GPU reads half the
  weights, but MLA's latent KV cache is replicated on every TP rank (the ``kvrl plan`` docstring), so each
  GPU reads all of it: kv = 31,104 B per token (27 layers x (512 + 64) x 2 B, ``kv_bytes_per_token``)
  over one GPU's bandwidth, not divided by TP.
- Bandwidth: H100 SXM HBM3, 3.35 TB/s (NVIDIA datasheet; H200 is 4.8 TB/s) at 70% efficiency, 2.345e12 B/s
  (an assumption: decode kernels reach roughly 60-80% of peak bandwidth). It scales every step term but
  ``fixed`` alike, so the policies' ratios barely depend on it.
  dense = 1,229,712,896 x 2 / 2 / 2.345e12 = 0.524 ms; routed (all experts) = 6.138 ms;
  kv = 31,104 / 2.345e12 = 13.3 ns per cached token per step.
- fixed = 0.83 ms: TP all-reduces, 2 per layer (attention and MLP outputs) + 1 for the logits, 55 x 15 us
  (small-message NCCL all-reduce latency over NVLink, order 10-20 us). Host-side scheduling is taken as
  overlapped with the GPU (vLLM v1's async scheduling); set ``fixed_s`` from a measured step if not.
- seq = 0.84 us per sequence: its fp32 logits (163,840 x 4 B) written once and read twice (softmax,
  sampling) per step.
- Check it stays memory-bound: one decode token costs 2 x 2.58 G FLOPs (active parameters less the
  embedding) + 0.94 M FLOPs per context token (absorbed MLA: 2 x (576 + 512) x 16 heads x 27 layers);
  64 sequences at 8K context, 4 tokens each (speculative verification): 3.3 TFLOP per step, 4.2 ms on 2 GPUs
  at 989 TFLOP/s x 40%, against 14.5 ms of memory time. So compute does not set the step time here.
- Examples: t(64, 64 x 8192) = 0.83 + 0.52 + 6.13 + 0.05 + 6.95 = 14.5 ms (4,400 tokens/s per engine);
  t(1, 8192) = 2.0 ms (490 tokens/s): a lone straggler runs the engine at a ninth of its throughput.
- Prefill (a new prompt, a continuation on an engine without its KV, a preempted sequence) is
  compute-bound: 2 x 2.58 G FLOPs per token + 2 x (192 + 128) x 16 x 27 = 276,480 FLOPs per causal
  (query, key) pair, at 2 GPUs x 989 TFLOP/s (H100 bf16 dense) x 40% (an assumed MFU): 6.5 us per token
  + 0.35 ns per pair; a 16K-token context costs 0.15 s. The engine stalls for it (vLLM's chunked prefill
  mixes it into decode steps; the work is the same). A prompt's KV is shared by the samples of its group
  on an engine (prefix caching / n > 1); a sequence's own KV stays on the engine it last ran on.
  With a global KV cache (Seer's Mooncake pool) a continuation reuses its KV on any engine, the transfer
  overlapped with decoding (taken as free); without one it recomputes its context. New weights (the next
  iteration) invalidate every KV.
- Memory: the engine's KV pool holds 1,854,440 tokens (``kvrl plan`` on rl-1x8.yaml: 0.9 x 80 GiB - 16.41 B
  x 2 B / TP 2 - 3 GiB overhead = 53.7 GiB / 31,104 B). vLLM admits a sequence when its context and the
  next step's tokens of all running sequences fit; when the running ones outgrow the pool it preempts the
  newest, which later recomputes its context (vLLM v1's recompute preemption).
- Speculative decoding: with i.i.d. per-token acceptance a and k drafted tokens, a step yields
  (1 - a^(k+1)) / (1 - a) tokens per sequence (Leviathan et al. 2023, "Fast Inference from Transformers
  via Speculative Decoding": the expected accepted prefix plus the one token verification always adds).
  The verification step reads the same weights and KV once for k+1 query tokens (the roofline check above),
  so its time is t(B, S) with coverage over B x (k+1) tokens, times ``spec_overhead`` = 1.1 for drafting
  and rejection sampling (an assumption: Seer drafts from a per-group suffix tree on the CPU). a = 0.5 and
  k = 3 (1.875 tokens per step) are assumptions, not measurements: rollouts sample at temperature 1 and
  the drafter is a suffix tree, not a model; replace them with the acceptance vLLM's spec-decode metrics
  report on real rollouts.

Time advances from event to event (a sequence reaches its stop, a prefill ends, the pool fills); between
events every engine's batch is fixed and its step time grows by kv x B per step, so m steps take
m t0 + kv B m (m - 1) / 2 exactly, and engines that are not at an event advance by fractional steps.

Policies (``POLICIES``): ``sync`` (kvrl's ``RolloutPool`` today: whole groups, ``chunk_size`` groups per call
to whichever engine is free, the next call only when the whole chunk is done); ``divided`` (Seer: every
sample its own request, generated ``chunk_tokens`` at a time and re-dispatched between chunks to the
least-loaded engine); ``context_aware`` (Seer: one probe request per group first, then groups longest
estimated first); ``partial`` (Kimi k1.5: at most ``segment_tokens`` new tokens per trajectory per
iteration, the rest carried over and recomputed on the new weights); ``speculative``; ``all``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

# ---- Kimi-VL-A3B facts, from `kvrl plan` (actors/plan.py) on configs/kimi-vl-a3b/ (see the docstring) ----
PARAMS = 16_407_654_384  # model_shape(...).params
VISION_PARAMS = 447_545_840  # model_shape(...).vision_params
ACTIVE_PARAMS = 2_914_774_528  # model_shape(...).active_params: the language model per token
# MoE layers x routed experts x (gate, up, down) x hidden x moe_intermediate_size
ROUTED_PARAMS = 26 * 64 * 3 * 2048 * 1408
EMBED_PARAMS = 163_840 * 2048  # vocab x hidden: the input table, read B rows a step
LAYERS, HEADS = 27, 16
ROUTED_SHARE = 6 / 64  # num_experts_per_tok / n_routed_experts
# kv_bytes_per_token: layers x (kv_lora_rank + qk_rope_head_dim) x bf16
KV_BYTES_PER_TOKEN = 27 * (512 + 64) * 2
KV_POOL_TOKENS = 1_854_440  # make_plan(rl-1x8.yaml).kv_tokens: one engine's KV pool
VOCAB = 163_840
BF16 = 2
# ---- H100 SXM (NVIDIA datasheet) and the stated efficiencies ----
HBM_BYTES_PER_S = 3.35e12
BANDWIDTH_EFFICIENCY = 0.7  # assumption: decode kernels reach ~60-80% of peak HBM bandwidth
PEAK_FLOPS = 989e12  # bf16 dense tensor cores
PREFILL_MFU = 0.4  # assumption: prefill is a small share of rollout time either way
ALLREDUCE_S = 15e-6  # small-message NCCL all-reduce latency over NVLink (order 10-20 us)
EPS = 1e-6  # tokens: float slack when a sequence reaches its stop


@dataclass(frozen=True)
class Group:
    """One prompt and its n samples: the prompt's length and each sample's response length (tokens)."""

    prompt_tokens: int
    response_tokens: tuple[int, ...]

    def __post_init__(self):
        if self.prompt_tokens < 0 or not self.response_tokens or min(self.response_tokens) < 1:
            raise ValueError(f"a group needs prompt_tokens >= 0 and response lengths >= 1, got {self}")


Trace = Sequence[Group]  # one iteration's groups, in the order the driver submits them


@dataclass(frozen=True)
class CostModel:
    """One engine's decode-step and prefill times, seconds (formulas and numbers: module docstring)."""

    fixed_s: float  # per step, whatever the batch: TP all-reduces
    dense_s: float  # reading the weights every token uses
    routed_s: float  # reading every routed expert; a step reads the share its tokens cover
    routed_share: float  # experts one token routes to / routed experts (0: no MoE term)
    seq_s: float  # per running sequence: logits and sampling
    kv_s: float  # per cached context token of the running sequences
    prefill_token_s: float = 0.0  # per prefilled token: its linear layers
    prefill_pair_s: float = 0.0  # per causal (query, key) pair: prefill attention

    def step_s(self, batch: int, context: float, tokens_per_seq: int = 1) -> float:
        """Seconds of one step of ``batch`` sequences, ``context`` cached tokens in all, each sequence
        scoring ``tokens_per_seq`` tokens (k+1 when verifying k drafted ones)."""
        covered = 1.0 - (1.0 - self.routed_share) ** (batch * tokens_per_seq)
        return (
            self.fixed_s + self.dense_s + self.routed_s * covered + self.seq_s * batch + self.kv_s * context
        )

    def prefill_s(self, cached: float, context: float) -> float:
        """Seconds to compute the KV of positions [cached, context) given the first ``cached`` ones."""
        pairs = (context * context - cached * cached) / 2
        return self.prefill_token_s * (context - cached) + self.prefill_pair_s * pairs


def kimi_vl_a3b_cost(tp: int = 2, hbm_bytes_per_s: float = HBM_BYTES_PER_S) -> CostModel:
    """Kimi-VL-A3B on one vLLM engine over ``tp`` H100-class GPUs (every number: module docstring)."""
    bandwidth = hbm_bytes_per_s * BANDWIDTH_EFFICIENCY
    dense = PARAMS - VISION_PARAMS - ROUTED_PARAMS - EMBED_PARAMS
    linear_flops = 2 * (ACTIVE_PARAMS - EMBED_PARAMS)
    pair_flops = 2 * (192 + 128) * HEADS * LAYERS  # (qk_nope + qk_rope) and v_head dims, non-absorbed
    flops = tp * PEAK_FLOPS * PREFILL_MFU
    return CostModel(
        fixed_s=(2 * LAYERS + 1) * ALLREDUCE_S if tp > 1 else 0.0,
        dense_s=dense * BF16 / tp / bandwidth,
        routed_s=ROUTED_PARAMS * BF16 / tp / bandwidth,
        routed_share=ROUTED_SHARE,
        seq_s=3 * VOCAB * 4 / bandwidth,
        kv_s=KV_BYTES_PER_TOKEN / bandwidth,  # the latent cache is replicated, not split, across TP ranks
        prefill_token_s=linear_flops / flops,
        prefill_pair_s=pair_flops / flops,
    )


@dataclass(frozen=True)
class Settings:
    """The cluster and the knobs; defaults are configs/kimi-vl-a3b/rl-1x8.yaml and kvrl plan on it."""

    engines: int = 2  # resources.rollout_actors
    max_num_seqs: int = 64  # rollout.max_num_seqs
    kv_pool_tokens: int = KV_POOL_TOKENS
    chunk_size: int = 8  # rollout.chunk_size: groups per sync request batch
    chunk_tokens: int = 4096  # divided: Seer's chunks are "a few thousand" tokens (REFERENCES.md)
    segment_tokens: int = 8192  # partial: half of max_tokens 16384, so a trajectory spans <= 2 iterations
    accept_rate: float = 0.5  # speculative: per-token acceptance (assumption, module docstring)
    draft_tokens: int = 3  # speculative: k drafted tokens per step
    spec_overhead: float = 1.1  # speculative: step-time factor for drafting and rejection sampling
    global_kv_cache: bool = True  # Seer's Mooncake pool: continuations skip recompute on any engine
    cost: CostModel = field(default_factory=kimi_vl_a3b_cost)


@dataclass(frozen=True)
class Policy:
    """A scheduling policy as the features it turns on."""

    name: str
    divided: bool = False  # per-sample requests in chunk_tokens chunks, least-loaded engine (Seer)
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


def tokens_per_step(accept_rate: float, draft_tokens: int) -> float:
    """Expected tokens a sequence gains per verification step with i.i.d. acceptance ``accept_rate`` of
    ``draft_tokens`` drafts: (1 - a^(k+1)) / (1 - a) (Leviathan et al. 2023), the expected accepted
    prefix plus the one token verification always yields."""
    if accept_rate >= 1.0:
        return draft_tokens + 1.0
    return (1.0 - accept_rate ** (draft_tokens + 1)) / (1.0 - accept_rate)


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


@dataclass(eq=False)
class _Sample:
    """One trajectory; lives across iterations when partial rollouts carry it over."""

    group: int
    prompt: int
    target: int  # response tokens it ends with
    probe: bool  # the group's first sample: context_aware runs it first
    done: float = 0.0  # response tokens generated so far
    segment_end: float = math.inf  # partial: where this iteration's segment stops
    kv_on: int | None = None  # the engine holding its KV (None: none does)
    arrival: int = 0  # submission order within the iteration

    @property
    def context(self) -> float:
        return self.prompt + self.done


@dataclass(eq=False)
class _Seq:
    """A sample running on an engine until ``stop_at`` response tokens."""

    sample: _Sample
    stop_at: float
    start: float  # sample.done when it was admitted


@dataclass(eq=False)
class _Engine:
    """One vLLM instance: its running batch, its own queue (sync), its prefix cache and its clock."""

    index: int
    running: list[_Seq] = field(default_factory=list)  # in admission order: the newest is preempted first
    waiting: deque[_Sample] = field(default_factory=deque)  # sync: the engine's own FIFO (vLLM's queue)
    stall_until: float = 0.0  # prefill in progress until then
    busy_s: float = 0.0
    seq_s: float = 0.0  # sequence-seconds: running sequences integrated over time
    prompts: set[int] = field(default_factory=set)  # groups whose prompt KV it caches

    @property
    def context(self) -> float:
        return sum(s.sample.context for s in self.running)

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting


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
    stops: list[float] = field(default_factory=list)  # when each scheduled sample finished or paused


class _Simulator:
    """Replays traces under one policy; ``run`` returns one ``_IterationStats`` per iteration."""

    def __init__(self, policy: Policy, settings: Settings):
        self.p, self.s = policy, settings
        self.gain = (
            tokens_per_step(settings.accept_rate, settings.draft_tokens) if policy.speculative else 1.0
        )
        self.verify = settings.draft_tokens + 1 if policy.speculative else 1
        self.slow = settings.spec_overhead if policy.speculative else 1.0
        self.estimates: dict[int, int] = {}  # group -> its probe's length (context_aware)
        self.carried: list[_Sample] = []
        self.groups = 0

    def run(self, traces: Sequence[Trace]) -> list[_IterationStats]:
        return [self._iteration(trace) for trace in traces]

    # -- one iteration --

    def _iteration(self, trace: Trace) -> _IterationStats:
        samples = self._schedule(trace)
        self.stats, self.engines = _IterationStats(), [_Engine(i) for i in range(self.s.engines)]
        self.queue: list[tuple] = []
        self.chunks: deque[list[_Sample]] = deque()
        if self.p.divided:
            for sample in samples:
                self._push(sample)
        else:
            self.chunks.extend(_chunks(samples, self.s.chunk_size))
        now: float | None = 0.0
        while now is not None:
            now = self._event(now)
        return self._finish(len(samples))

    def _schedule(self, trace: Trace) -> list[_Sample]:
        """Carried trajectories first (the oldest), group by group, then the new groups; KV from the old
        weights is gone."""
        samples, self.carried = sorted(self.carried, key=lambda s: s.group), []
        for group in trace:
            for i, length in enumerate(group.response_tokens):
                samples.append(_Sample(self.groups, group.prompt_tokens, length, probe=i == 0))
            self.groups += 1
        for order, sample in enumerate(samples):
            sample.arrival, sample.kv_on = order, None
            sample.segment_end = sample.done + self.s.segment_tokens if self.p.partial else math.inf
        return samples

    def _event(self, now: float) -> float | None:
        """Dispatch, then advance every engine to the next event; None when the iteration is over."""
        self._dispatch(now)
        events = [self._next(e, now) for e in self.engines]
        dt = min(t for t, _ in events)
        if dt == math.inf:
            if self.queue or self.chunks or any(e.waiting for e in self.engines):
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
        st.tail_s = st.makespan_s - st.stops[math.ceil(0.9 * scheduled) - 1] if st.stops else 0.0
        st.busy_s = sum(e.busy_s for e in self.engines)
        st.seq_s = sum(e.seq_s for e in self.engines)
        return st

    # -- dispatch --

    def _dispatch(self, now: float) -> None:
        if self.p.divided:
            self._dispatch_divided(now)
            return
        for engine in self.engines:  # RolloutPool: free actors in index order take the next chunk
            if engine.idle and self.chunks:
                engine.waiting.extend(self.chunks.popleft())
            while engine.waiting and self._fits(engine, engine.waiting[0]):
                self._start(engine, engine.waiting.popleft(), now)

    def _dispatch_divided(self, now: float) -> None:
        while self.queue:
            sample = self.queue[0][-1]
            fits = [e for e in self.engines if self._fits(e, sample)]
            if not fits:
                return
            heapq.heappop(self.queue)
            engine = min(fits, key=lambda e: (e.context, len(e.running), e.index != sample.kv_on, e.index))
            self._start(engine, sample, now)

    def _fits(self, engine: _Engine, sample: _Sample) -> bool:
        """vLLM admits a sequence when its context and this step's new tokens of all fit in the pool."""
        room = self.s.kv_pool_tokens - engine.context - (len(engine.running) + 1) * self.gain
        return len(engine.running) < self.s.max_num_seqs and sample.context <= room

    def _start(self, engine: _Engine, sample: _Sample, now: float) -> None:
        prefill = self.s.cost.prefill_s(self._cached(engine, sample), sample.context)
        engine.stall_until = max(engine.stall_until, now) + prefill
        self.stats.prefill_s += prefill
        engine.prompts.add(sample.group)
        sample.kv_on = engine.index
        stop = min(sample.target, sample.segment_end)
        if self.p.divided:
            stop = min(stop, sample.done + self.s.chunk_tokens)
        engine.running.append(_Seq(sample, stop, sample.done))

    def _cached(self, engine: _Engine, sample: _Sample) -> float:
        """Tokens of the sample's context whose KV the engine already has (or fetches: global cache)."""
        if sample.kv_on == engine.index or (self.s.global_kv_cache and sample.kv_on is not None):
            return sample.context
        shared = self.s.global_kv_cache and any(sample.group in e.prompts for e in self.engines)
        return sample.prompt if shared or sample.group in engine.prompts else 0.0

    def _push(self, sample: _Sample) -> None:
        heapq.heappush(self.queue, (*self._priority(sample), sample.arrival, sample))

    def _priority(self, sample: _Sample) -> tuple:
        """divided: first come first served by first arrival, so a continuation goes before samples not
        yet started. context_aware: probes, then the longest estimated group first (a group whose probe
        is still running counts as longest: the probes start together, so it outlasts every finished
        one)."""
        if not self.p.context_aware:
            return ()
        if sample.probe:
            return (0, 0.0)
        return (1, -self.estimates.get(sample.group, math.inf))

    def _reprioritize(self) -> None:
        self.queue = [(*self._priority(item[-1]), *item[-2:]) for item in self.queue]
        heapq.heapify(self.queue)

    # -- time --

    def _next(self, engine: _Engine, now: float) -> tuple[float, float]:
        """(seconds, decode steps) until the engine's next event: a prefill ends, a sequence reaches its
        stop, or the running sequences fill the KV pool."""
        if engine.stall_until > now:
            return engine.stall_until - now, 0.0
        if not engine.running:
            return math.inf, 0.0
        batch = len(engine.running)
        steps = min(s.stop_at - s.sample.done for s in engine.running) / self.gain
        pool = (self.s.kv_pool_tokens - engine.context) / (batch * self.gain)
        steps = max(0.0, min(steps, pool))
        t0, growth = self._step(engine)
        return steps * t0 + growth * steps * (steps - 1) / 2, steps

    def _step(self, engine: _Engine) -> tuple[float, float]:
        """The engine's step time now and its increase per step (the KV of B new tokens), seconds."""
        batch, cost = len(engine.running), self.s.cost
        t0 = cost.step_s(batch, engine.context, self.verify) * self.slow
        return t0, cost.kv_s * batch * self.gain * self.slow

    def _advance(self, engine: _Engine, now: float, dt: float, steps: float | None) -> None:
        if engine.running or engine.stall_until > now:
            engine.busy_s += dt
        engine.seq_s += dt * len(engine.running)
        if engine.stall_until > now or not engine.running:
            return
        if steps is None:  # not this engine's event: the (fractional) steps that fit in dt
            t0, growth = self._step(engine)
            steps = _steps_within(dt, t0, growth)
        for seq in engine.running:
            seq.sample.done = min(seq.stop_at, seq.sample.done + steps * self.gain)

    def _settle(self, engine: _Engine, now: float) -> None:
        for seq in [s for s in engine.running if s.stop_at - s.sample.done <= EPS]:
            engine.running.remove(seq)
            seq.sample.done = seq.stop_at
            self.stats.generated_tokens += seq.stop_at - seq.start
            self._stopped(seq.sample, now)
        while engine.running and self._overfull(engine):
            self._preempt(engine, engine.running.pop())

    def _overfull(self, engine: _Engine) -> bool:
        """The next step's tokens do not fit in the KV pool: vLLM preempts."""
        return engine.context + len(engine.running) * self.gain > self.s.kv_pool_tokens + EPS

    def _stopped(self, sample: _Sample, now: float) -> None:
        if sample.done >= sample.target - EPS:
            self.stats.stops.append(now)
            self.stats.finished_tokens += sample.target
            self.stats.finished_samples += 1
            if sample.probe and self.p.context_aware:
                self.estimates[sample.group] = sample.target
                self._reprioritize()
        elif sample.done >= sample.segment_end - EPS:
            self.stats.stops.append(now)
            self.carried.append(sample)
        else:
            self._push(sample)  # a chunk ended: back to the global queue

    def _preempt(self, engine: _Engine, seq: _Seq) -> None:
        """vLLM's recompute preemption: the KV is freed, the sequence waits to be prefilled again."""
        self.stats.preemptions += 1
        self.stats.generated_tokens += seq.sample.done - seq.start
        seq.sample.kv_on = None
        if self.p.divided:
            self._push(seq.sample)
        else:
            engine.waiting.appendleft(seq.sample)


def _steps_within(dt: float, t0: float, growth: float) -> float:
    """Solve m t0 + growth m (m - 1) / 2 = dt for m >= 0 (time of m steps whose time grows linearly)."""
    b = t0 - growth / 2
    return 2 * dt / (b + math.sqrt(b * b + 2 * growth * dt))


def _chunks(samples: list[_Sample], groups_per_chunk: int) -> list[list[_Sample]]:
    """Consecutive groups, ``groups_per_chunk`` at a time (RolloutPool's chunks of requests)."""
    chunks: list[list[_Sample]] = []
    seen: list[int] = []
    for sample in samples:
        if not seen or seen[-1] != sample.group:
            seen.append(sample.group)
            if (len(seen) - 1) % groups_per_chunk == 0:
                chunks.append([])
        chunks[-1].append(sample)
    return chunks


# ---- public API ----


def simulate(traces: Sequence[Trace], policy: str | Policy, settings: Settings | None = None) -> dict:
    """Replay ``traces`` (one per iteration) under ``policy``; every time in seconds, lengths in tokens.

    Returns throughput (finished responses' tokens / simulated seconds over all iterations), the
    per-iteration makespans, the tail (seconds from 90% of an iteration's samples done to the last,
    averaged), the engines' busy fraction (time with a sequence running or a prefill) and occupancy
    (running sequences / max_num_seqs, time-averaged), and the work left unfinished at the end.

    Partial rollouts start with nothing carried over and end with work in flight that counts nowhere;
    ``steady_throughput_tokens_per_s`` leaves out the first iteration (the same for every policy) to show
    the rate once carry-in and carry-out balance; ``generated_tokens_per_s`` credits every token made."""
    settings = settings or Settings()
    policy = POLICIES[policy] if isinstance(policy, str) else policy
    _check(traces, settings)
    sim = _Simulator(policy, settings)
    its = sim.run(traces)
    seconds = sum(st.makespan_s for st in its)
    finished = sum(st.finished_tokens for st in its)
    return {
        "policy": policy.name,
        "iterations": len(its),
        "seconds": seconds,
        "throughput_tokens_per_s": _rate(its, "finished_tokens"),
        "steady_throughput_tokens_per_s": _rate(its[1:], "finished_tokens") if len(its) > 1 else math.nan,
        "generated_tokens_per_s": _rate(its, "generated_tokens"),
        "finished_tokens": finished,
        "finished_samples": sum(st.finished_samples for st in its),
        "unfinished_samples": len(sim.carried),
        "unfinished_tokens": sum(s.done for s in sim.carried),
        "makespan_s": [st.makespan_s for st in its],
        "tail_s": statistics.fmean(st.tail_s for st in its),
        "tail_s_per_iteration": [st.tail_s for st in its],
        "busy_fraction": sum(st.busy_s for st in its) / (settings.engines * seconds) if seconds else 0.0,
        "occupancy": _rate(its, "seq_s") / (settings.engines * settings.max_num_seqs),
        "prefill_s": sum(st.prefill_s for st in its),
        "preemptions": sum(st.preemptions for st in its),
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
        r["steady_throughput_vs_sync"] = (
            r["steady_throughput_tokens_per_s"] / base["steady_throughput_tokens_per_s"]
        )
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
