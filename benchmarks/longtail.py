"""``kvrl bench longtail``: rollout without the long tail, measured on a policy whose own lengths are
heavy-tailed, and replayed through a GPU-cluster simulation.

The workload (``corpus/longtail.py``): "Add these numbers" prompts whose list length follows a power law,
and a tiny Kimi-VL SFT'd on their running-total traces (``configs/longtail/sft.yaml``), so its samples stop
by themselves after a number of steps the prompt sets: heavy-tailed and correlated within a group, nothing
forced. Built once into ``runs/bench/longtail-policy`` (a few minutes) unless ``--model`` names one.

Side by side in one run, on one pool of rollout actors, the same prompts and seeds per iteration, with a
weight sync between iterations as in RL (it drops the engines' KV caches, so continuing a partial rollout
pays its prefill again): the synchronous pool (baseline) and each technique alone and together (the
policies of ``benchmarks/longtail_sim.py``). Reported per policy over several iterations: rollout
throughput (tokens of responses that finished / rollout seconds: partial rollouts are credited only for
finished work), the mean tail time (``rollout/schedule.py``) and the engines' busy fraction. The top-level
``ratio`` is all techniques together against the synchronous pool, in throughput.

The simulation replays the baseline's measured lengths, scaled so that this run's ``max_tokens`` maps to
the A3B configs' 16K-token responses (the shape of the distribution is what was measured; the scale is a
stated assumption), through ``benchmarks/longtail_sim.py``'s cost model of a Kimi-VL-A3B decode step.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from actors.placement import ResourceConfig, place, start_ray
from actors.rollout import RolloutPool
from corpus.longtail import make_longtail
from kimivl import KimiVLForConditionalGeneration, KimiVLProcessor
from rl.partial import PartialBuffer, PartialConfig, group_key
from rollout.engine import EngineConfig
from rollout.prompts import chat_prompt
from rollout.schedule import ScheduleConfig
from rollout.trajectory import Trajectory
from rollout.worker import RolloutRequest, SamplingConfig

from . import longtail_sim as sim
from .common import result

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
POLICY_DIR = ROOT / "runs" / "bench" / "longtail-policy"
A3B_MAX_TOKENS = 16384  # rollout.sampling.max_tokens of configs/kimi-vl-a3b/rl-1x8.yaml
SPECULATIVE_TOKENS = 4  # the longest draft of grouped speculative decoding
SPECULATIVE_MAX_BATCH = 4  # draft only in the tail, where a step's fixed cost dominates (docs/benchmarks.md)
# every policy of the simulation, measured here: the speculative ones on a second pool whose engines
# have the grouped proposer (an engine has it or not), the others on a plain one
MEASURED = dict(sim.POLICIES)


@dataclass
class Workload:
    prompts: list[tuple[str, str]]  # (id, chat prompt), iterations x prompts_per_iteration of them
    sampling: SamplingConfig
    iterations: int
    chunk_tokens: int
    segment_tokens: int


def run(quick: bool = False, repeats: int = 3, model: str | None = None, engines: int = 2) -> list[dict]:
    model = model or build_policy()
    # quick: a check that it all runs (CI), not a measurement; its lengths are cut at 128 tokens (two
    # segments and two chunks of 64)
    # 12 iterations: partial rollouts are credited only for finished work, and what is still in flight
    # after the last iteration is lost; a long RL run has no last iteration
    iterations, per, max_tokens = (3, 4, 128) if quick else (12, 16, 512)  # the policy's longest: ~250
    n = 4
    processor = KimiVLProcessor.from_pretrained(model)
    work = Workload(
        _prompts(processor, iterations * per),
        SamplingConfig(n=n, max_tokens=max_tokens),
        iterations,
        chunk_tokens=64,  # about the p75 of the policy's lengths
        segment_tokens=64,  # about the p85: the longest sixth or so continue in the next iteration
    )
    measured: dict[str, list[dict]] = {name: [] for name in MEASURED}
    with _pools(model, engines, chunk_size=-(-per // engines)) as (pools, weights):
        warm = Workload(work.prompts[:per], work.sampling, 1, work.chunk_tokens, work.segment_tokens)
        for speculative, pool in pools.items():
            _iterations(pool, weights, warm, sim.Policy("warm-up", speculative=speculative))
        for _ in range(repeats):  # policies interleaved, so that a slow spell of the machine hits all
            for name, policy in MEASURED.items():
                measured[name].append(_iterations(pools[policy.speculative], weights, work, policy))
    summary = {name: _median(runs) for name, runs in measured.items()}
    base = summary["sync"]
    for s in summary.values():
        s["throughput_vs_sync"] = s["throughput"] / base["throughput"]
        s["tail_vs_sync"] = s["tail_s"] / base["tail_s"] if base["tail_s"] else math.nan
    traces = measured["sync"][0]["trace"]
    scale = A3B_MAX_TOKENS / max_tokens
    scaled = [
        [sim.Group(g.prompt_tokens, tuple(round(x * scale) for x in g.response_tokens)) for g in t]
        for t in traces
    ]
    acceptance = summary["speculative"].get("spec_acceptance") or sim.Settings().accept_rate
    settings = replace(
        sim.Settings(),
        accept_rate=acceptance,
        draft_tokens=SPECULATIVE_TOKENS,
        chunk_tokens=round(work.chunk_tokens * scale),
        segment_tokens=round(work.segment_tokens * scale),
    )
    simulated = sim.compare(scaled, settings)
    # and on the simulator's own A3B-shaped trace (median 4K, p99 24K tokens), at the same acceptance
    a3b = sim.compare(sim.synthetic_traces(5, 64, 8, seed=0), replace(sim.Settings(), accept_rate=acceptance))
    return [
        result(
            "longtail",
            [r["throughput"] for r in measured["all"]],
            [r["throughput"] for r in measured["sync"]],
            "finished tokens/s",
            higher_is_better=True,
            size=f"{iterations} iterations x {per} prompts x {n} samples",
            policies={k: {m: v for m, v in s.items() if m != "trace"} for k, s in summary.items()},
            tail_ratio=summary["all"]["tail_vs_sync"],
            workload=sim.describe_trace([g for t in traces for g in t]),
            settings=dict(
                engines=engines,
                iterations=iterations,
                prompts_per_iteration=per,
                samples_per_prompt=n,
                max_tokens=max_tokens,
                chunk_tokens=work.chunk_tokens,
                segment_tokens=work.segment_tokens,
                speculative_tokens=SPECULATIVE_TOKENS,
                speculative_max_batch=SPECULATIVE_MAX_BATCH,
            ),
            simulation={
                "what": "trace-driven simulation, not a measurement: the sync run's lengths x "
                f"{scale:g} replayed on Kimi-VL-A3B engines (benchmarks/longtail_sim.py), at the "
                "speculative acceptance measured here",
                "settings": {k: v for k, v in asdict(settings).items() if k != "cost"},
                "ratio": simulated["all"]["throughput_vs_sync"],
                "policies": {k: _sim_summary(v) for k, v in simulated.items()},
                "a3b_trace": {
                    "what": "sim.synthetic_traces(5, 64, 8, seed=0): 64 prompts x 8 samples, median 4K, "
                    "p99 24K tokens, rl-1x8's engines and knobs, the acceptance measured here",
                    "ratio": a3b["all"]["throughput_vs_sync"],
                    "policies": {k: _sim_summary(v) for k, v in a3b.items()},
                },
            },
            baseline_description="the synchronous pool: whole groups in chunks, every sample to its end",
            model=model,
        )
    ]


def build_policy(out: Path = POLICY_DIR) -> str:
    """The workload's policy: a tiny Kimi-VL SFT'd on long-tail traces (reused once built)."""
    final = out / "sft" / "final"
    if (final / "config.json").exists():
        return str(final)
    from kimivl.tiny import make_tiny
    from runkit.config import load_config
    from sft.trainer import SFTConfig, train

    log.info("building the long-tail policy in %s (a few minutes, once)", out)
    tiny = make_tiny(out / "tiny", seed=0)
    make_longtail(out / "data", 1000, seed=0, sft_problems=2000, sft_alpha=1.0)
    overrides = [
        f"model={tiny}",
        f"data.path={out / 'data' / 'sft_train.jsonl'}",
        f"trainer.output_dir={out / 'sft'}",
    ]
    train(load_config(SFTConfig, ROOT / "configs" / "longtail" / "sft.yaml", overrides))
    import ray

    if ray.is_initialized():  # SFT's Ray is sized for its learners; the rollout pools start their own
        ray.shutdown()
    return str(final)


def _prompts(processor, count: int) -> list[tuple[str, str]]:
    """(id, chat prompt) of ``count`` fresh long-tail problems (another seed than the SFT data)."""
    folder = Path(tempfile.mkdtemp(prefix="kvrl-bench-longtail-"))
    make_longtail(folder, count, seed=1)
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    return [(r["id"], chat_prompt(processor, r["question"], 0)) for r in rows]


class _pools:
    """A local Ray, two pools of rollout actors (keyed by whether their engines speculate) and the
    policy's weights in the object store."""

    def __init__(self, model: str, engines: int, chunk_size: int):
        # the synchronous pool at its best: one chunk per engine, each engine batching all its prompts
        self.model, self.engines, self.chunk_size = model, engines, chunk_size
        self.pools: dict[bool, RolloutPool] = {}
        self.placements = []

    def __enter__(self):
        import ray

        self.started = not ray.is_initialized()
        if self.started:
            # both pools' placements at once
            start_ray(ResourceConfig(rollout_actors=2 * self.engines, learner_ranks=2))
        for speculative in (False, True):
            placement = place(ResourceConfig(rollout_actors=self.engines, learner_ranks=1))
            self.placements.append(placement)
            tokens = SPECULATIVE_TOKENS if speculative else 0
            engine = EngineConfig(
                model=self.model,
                max_model_len=1024,
                max_num_seqs=64,
                speculative_tokens=tokens,
                speculative_max_batch=SPECULATIVE_MAX_BATCH,
            )
            self.pools[speculative] = RolloutPool(engine, self.engines, placement.rollout, self.chunk_size)
        policy = KimiVLForConditionalGeneration.from_pretrained(self.model)
        return self.pools, ray.put(dict(policy.checkpoint_tensors()))

    def __exit__(self, *exc):
        import ray

        for pool in self.pools.values():
            pool.shutdown()
        for placement in self.placements:
            placement.remove()
        if self.started:
            ray.shutdown()


def _iterations(pool: RolloutPool, weights, work: Workload, policy: sim.Policy) -> dict:
    """``work.iterations`` rollouts of an equal share of ``work.prompts`` each, under ``policy``."""
    schedule = ScheduleConfig(
        divided=policy.divided, chunk_tokens=work.chunk_tokens, context_aware=policy.context_aware
    )
    partial = PartialConfig(enabled=policy.partial, segment_tokens=work.segment_tokens, max_iterations=8)
    buffer = PartialBuffer(partial)
    prompts, iterations, sampling = work.prompts, work.iterations, work.sampling
    per = len(prompts) // iterations
    seconds, tokens, tails, busy, per_step, accepted, counted = 0.0, 0, [], [], [], [], set()
    steps = 0.0
    trace: list[list[sim.Group]] = []
    drain, it = 0.0, 0
    # then, with no new prompts, the iterations that finish what partial rollouts still carry: the
    # same responses finished by every policy, and the time that takes charged to the policy
    while it < iterations or buffer.carried():
        fresh = [
            Trajectory(RolloutRequest(group_key(pid, it), prompt, seed=zlib.crc32(pid.encode())), j)
            for pid, prompt in prompts[it * per : (it + 1) * per]
            for j in range(sampling.n)
        ]
        start = time.perf_counter()
        out, metrics = pool.extend(buffer.schedule(fresh, it), sampling, schedule, it)
        seconds += time.perf_counter() - start
        drain += time.perf_counter() - start if it >= iterations else 0.0
        done = [t for t in out if t.done and t.key not in counted]
        counted.update(t.key for t in done)
        tokens += sum(len(t.response_ids) for t in done)
        steps += metrics["rollout_engine_steps"]
        if it < iterations:
            tails.append(metrics["rollout_tail_s"])
            busy.append(metrics["rollout_busy_fraction"])
            per_step.append(metrics["rollout_tokens_per_seq_step"])
        if "spec_acceptance" in metrics:
            accepted.append(metrics["spec_acceptance"])
        groups = buffer.collect(out)
        trace.append([sim.Group(len(g[0].prompt_ids), tuple(len(t.response_ids) for t in g)) for g in groups])
        pool.update_weights(weights)  # as in RL: new weights, the engines' caches dropped
        it += 1
    return {
        "throughput": tokens / seconds,
        "seconds": seconds,
        "finished_tokens": tokens,
        "finished_samples": len(counted),
        "drain_s": drain,  # of ``seconds``: finishing what partial rollouts carried past the last iteration
        "tail_s": statistics.fmean(tails),
        "busy_fraction": statistics.fmean(busy),
        "tokens_per_seq_step": statistics.fmean(per_step),
        "engine_steps": steps,  # summed over engines and iterations
        **({"spec_acceptance": statistics.fmean(accepted)} if accepted else {}),
        "trace": [t for t in trace if t],
    }


def _median(runs: list[dict]) -> dict:
    """The run with the median throughput (its tail and busy fraction with it), plus every throughput."""
    ordered = sorted(runs, key=lambda r: r["throughput"])
    mid = dict(ordered[(len(ordered) - 1) // 2])
    mid["throughput_runs"] = [r["throughput"] for r in runs]
    return mid


def _sim_summary(r: dict) -> dict:
    keys = ("throughput_tokens_per_s", "throughput_vs_sync", "tail_s", "tail_vs_sync", "busy_fraction")
    return {k: r[k] for k in keys}
