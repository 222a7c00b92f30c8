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
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

from .sim_cost import KV_BYTES_PER_TOKEN, KV_POOL_TOKENS, CostModel, kimi_vl_a3b_cost, tokens_per_step
from .sim_engine import IterationStats, Simulator
from .sim_inputs import (
    POLICIES,
    Group,
    Policy,
    Settings,
    Trace,
    describe_trace,
    load_traces,
    synthetic_trace,
    synthetic_traces,
)

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
    sim = Simulator(policy, settings)
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


def _rate(its: Sequence[IterationStats], what: str) -> float:
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
