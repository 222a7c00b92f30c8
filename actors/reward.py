"""The reward actor: a sandboxed verifier pool (``rewards.VerifierPool``) behind a Ray handle."""

from __future__ import annotations

import ray

from rewards import RewardConfig, Task, Verdict


@ray.remote
class RewardActor:
    def __init__(self, cfg: RewardConfig):
        self.pool = cfg.make_pool()

    def verify(self, tasks: list[Task]) -> list[Verdict]:
        return self.pool.verify(tasks)

    def replaced_workers(self) -> int:
        return self.pool.replaced
