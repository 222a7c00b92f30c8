"""The measured side of ``kvrl bench longtail`` (``benchmarks/longtail.py``): the workload's policy, its
prompts, the rollout pools on a local Ray, and one policy's iterations on them, timed."""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from actors.placement import ResourceConfig, place, start_ray
from actors.rollout import RolloutPool
from corpus.longtail import make_longtail
from kimivl import KimiVLForConditionalGeneration
from rl.partial import PartialBuffer, PartialConfig, group_key
from rollout.engine import EngineConfig
from rollout.prompts import chat_prompt
from rollout.schedule import ScheduleConfig
from rollout.trajectory import RepeatConfig, Trajectory
from rollout.worker import RolloutRequest, SamplingConfig

from . import longtail_sim as sim
from .common import ROOT

log = logging.getLogger(__name__)
POLICY_DIR = ROOT / "runs" / "bench" / "longtail-policy"
SPECULATIVE_TOKENS = 4  # the longest draft of grouped speculative decoding
SPECULATIVE_MAX_BATCH = 4  # draft only in the tail, where a step's fixed cost dominates (docs/benchmarks.md)


@dataclass
class Workload:
    prompts: list[tuple[str, str]]  # (id, chat prompt), iterations x prompts_per_iteration of them
    sampling: SamplingConfig
    iterations: int
    chunk_tokens: int
    segment_tokens: int
    seed: int = 0  # added to every prompt's sampling seed: another seed of the same workload


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


def make_prompts(processor, count: int, seed: int) -> list[tuple[str, str]]:
    """(id, chat prompt) of ``count`` fresh long-tail problems (other seeds than the SFT data's 0)."""
    folder = Path(tempfile.mkdtemp(prefix="kvrl-bench-longtail-"))
    make_longtail(folder, count, seed=seed)
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    return [(f"{r['id']}~{seed}", chat_prompt(processor, r["question"], 0)) for r in rows]


class Pools:
    """A local Ray, two pools of rollout actors (keyed by whether their engines speculate) and the
    policy's weights in the object store."""

    def __init__(self, model: str, engines: int, slots: int):
        self.model, self.engines, self.slots = model, engines, slots
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
                max_num_seqs=self.slots,
                speculative_tokens=tokens,
                speculative_max_batch=SPECULATIVE_MAX_BATCH,  # vLLM's schedule only below max_num_seqs
            )
            self.pools[speculative] = RolloutPool(engine, self.engines, placement.rollout)
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


def run_policy(pool: RolloutPool, weights, work: Workload, policy: sim.Policy) -> dict:
    """``work.iterations`` rollouts of an equal share of ``work.prompts`` each, under ``policy``; then,
    with no new prompts, the rollouts that finish what partial rollouts still carry (the same responses
    finished by every policy, the time that takes charged to the policy)."""
    schedule = ScheduleConfig(
        divided=policy.divided, chunk_tokens=work.chunk_tokens, context_aware=policy.context_aware
    )
    partial = PartialConfig(enabled=policy.partial, segment_tokens=work.segment_tokens, max_iterations=8)
    buffer = PartialBuffer(partial)
    prompts, iterations, sampling = work.prompts, work.iterations, work.sampling
    per = len(prompts) // iterations
    seconds, tokens, tails, busy, per_step, accepted, counted = 0.0, 0, [], [], [], [], set()
    steps, spanning, chunked, drafted = 0.0, 0, [], []
    trace: list[list[sim.Group]] = []
    calls: list[dict] = []
    drain, it = 0.0, 0
    while it < iterations or buffer.carried():
        fresh = _fresh(prompts[it * per : (it + 1) * per], it, sampling.n, work.seed)
        start = time.perf_counter()
        out, metrics = pool.extend(buffer.schedule(fresh, it), sampling, schedule, it, RepeatConfig())
        seconds += time.perf_counter() - start
        drain += time.perf_counter() - start if it >= iterations else 0.0
        calls += pool.call_stats
        done = [t for t in out if t.done and t.key not in counted]
        counted.update(t.key for t in done)
        tokens += sum(len(t.response_ids) for t in done)
        spanning += sum(len(set(t.born)) > 1 for t in done)
        steps += metrics["rollout_engine_steps"]
        chunked.append(metrics["rollout_chunked_call_share"])
        drafted.append(metrics.get("spec_draft_share", 0.0))
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
        # which techniques did something, and how much: an "all together" that quietly became one
        # technique shows here
        "active": {
            "divided_chunked_calls": statistics.fmean(chunked),  # calls cut at a chunk boundary
            "speculative_draft_steps": statistics.fmean(drafted),  # sequence-steps verifying a draft
            "partial_spanning_responses": spanning / max(len(counted), 1),  # sampled over > 1 iteration
        },
        **({"spec_acceptance": statistics.fmean(accepted)} if accepted else {}),
        "trace": [t for t in trace if t],
        "calls": calls,
    }


def _fresh(prompts: list[tuple[str, str]], iteration: int, n: int, seed: int) -> list[Trajectory]:
    """An iteration's new trajectories: ``n`` per prompt, each group with its prompt's seed."""
    return [
        Trajectory(RolloutRequest(group_key(pid, iteration), prompt, seed=_seed(pid, seed)), j)
        for pid, prompt in prompts
        for j in range(n)
    ]


def _seed(prompt_id: str, seed: int) -> int:
    """A prompt's sampling seed in workload seed ``seed``."""
    return zlib.crc32(prompt_id.encode()) + 7919 * seed
