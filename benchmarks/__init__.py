"""``kvrl bench NAME``: side-by-side benchmarks on this machine, reported as ratios measured in one run.

Each module has ``run(quick=False, repeats=3, model=None) -> list[dict]`` (records built by
``benchmarks.common.result``); ``kvrl bench`` writes them as JSON and adds rows to docs/benchmarks.md.
"""

from __future__ import annotations

import importlib

BENCHMARKS = {
    "rollout": "kvrl rollout actors (vLLM on Ray) vs transformers generate, tokens/s",
    "step": "one RL iteration end to end vs TRL GRPOTrainer, s/iteration, with kvrl's phases",
    "sync": "streamed weight sync vs the object-store path at 1x, 4x, 16x parameters: seconds and the "
    "learner ranks' extra peak memory",
    "scale": "iteration time as samples (64-1024) and response length (64-1024) grow",
    "longtail": "rollout throughput and tail time on heavy-tailed lengths: the synchronous pool vs partial "
    "rollouts and Seer-style scheduling, measured and in a GPU-cluster simulation",
    "pipeline": "pipelined RL (trainer.max_staleness 1) vs the synchronous loop on disjoint cores: "
    "iterations per hour, each role's idle fraction, held-out accuracy",
    "replay": "bf16 rollout vs fp32 learners without and with routing replay + TIS: mismatch KL, routing "
    "disagreement per layer, held-out accuracy against an fp32 rollout over seeds",
    "packing": "packed RL micro-batches (learner.micro_batch_tokens) vs right-padded ones, learner tokens/s "
    "on long-tailed and narrow response lengths, each side at its best setting",
    "optim": "Muon (Moonlight's scaling) vs AdamW: SFT steps to AdamW's final held-out loss, each at its "
    "tuned lr; held-out accuracy after a short RL run with each",
}


def run(name: str, **kwargs) -> list[dict]:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return importlib.import_module(f"benchmarks.{name}").run(**kwargs)
