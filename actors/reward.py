"""The reward actor: a sandboxed verifier pool (``rewards.VerifierPool``) behind a Ray handle."""

from __future__ import annotations

import ray

from actors.memory import rss_mb
from rewards import RewardConfig, Task, Verdict


@ray.remote
class RewardActor:
    def __init__(self, cfg: RewardConfig):
        self.pool = cfg.make_pool()

    def verify(self, tasks: list[Task]) -> list[Verdict]:
        return self.pool.verify(tasks)

    def replaced_workers(self) -> int:
        return self.pool.replaced

    def rss_mb(self) -> float:
        """This actor and its verifier worker processes, MiB."""
        return rss_mb()
