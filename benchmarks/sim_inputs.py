"""What the rollout-scheduling simulator (``benchmarks/longtail_sim.py``) takes: traces of groups (one
prompt, its samples' response lengths), synthetic or measured; the cluster and its knobs (``Settings``);
and the scheduling policies as the features each turns on. Pure Python."""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .sim_cost import KV_POOL_TOKENS, CostModel, kimi_vl_a3b_cost, tokens_per_step


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
class Settings:
    """The cluster and the knobs; defaults are configs/kimi-vl-a3b/rl-1x8.yaml with the engines of
    ``sim_cost.SIM_LAYOUT`` (2 x TP 2) and kvrl plan on it."""

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
