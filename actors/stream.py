"""Streamed weight sync, wired: learner rank 0 (``learner/stream.py``) broadcasts the weights unit by
unit to every engine worker (``rollout/stream.py``) over a process group of their own, instead of one
full copy through Ray's object store per engine. Plumbing only: who joins, in which order, and what
happens when a member dies.

The group holds the sender (rank 0) and each engine's workers (``rank_offset`` 1 + k x tensor-parallel
size for the k-th engine); it is formed on the first sync and again whenever its members change. A
sync starts every engine's receive and every learner rank's send at once (ZeRO-3 gathers need all
ranks) and waits for all of them. An engine that dies mid-stream stops the others' broadcasts: every
engine of that sync that did not finish is replaced (a half-loaded engine is not trusted), the group
is formed again, and the whole sync is sent again, at most ``attempts`` times. A learner rank's death
is raised as is (the run's lifecycle restarts from its checkpoint).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import ray

from actors.learner import LearnerGroup, gather
from actors.placement import ACTOR_FAILURES

log = logging.getLogger(__name__)


class WeightStream:
    def __init__(
        self, learners: LearnerGroup, backend: str = "gloo", timeout_s: float = 60.0, attempts: int = 2
    ):
        self.learners, self.backend, self.timeout_s, self.attempts = learners, backend, timeout_s, attempts
        self.plan = ray.get(learners.actors[0].stream_plan.remote())
        self._members: list[str] | None = None  # the engines in the group now, by actor id

    def _connect(self, engines: Sequence, tp: int) -> None:
        members = [a._actor_id.hex() for a in engines]
        if members == self._members:
            return
        self._members = None
        world = 1 + len(engines) * tp
        sender = self.learners.actors[0]
        host, port = ray.get(sender.stream_listen.remote(world, self.timeout_s))
        joins = [
            a.join_stream.remote(
                {
                    "host": host,
                    "port": port,
                    "rank_offset": 1 + k * tp,
                    "world_size": world,
                    "backend": self.backend,
                    "timeout_s": self.timeout_s,
                }
            )
            for k, a in enumerate(engines)
        ]
        gather([sender.stream_join.remote(host, world, self.backend, self.timeout_s), *joins])
        self._members = members
        log.info("weight stream: group of %d formed (%s, %s:%d)", world, self.backend, host, port)

    def send(self, pool, indices: Sequence[int]) -> list[float]:
        """Stream the learners' weights into ``pool``'s engines ``indices`` at ``pool.version``; each
        engine's receive seconds. Dead or half-loaded engines are replaced and the sync sent again."""
        indices = list(indices)
        for attempt in range(1, self.attempts + 1):
            engines = [pool.actors[i] for i in indices]
            start = time.perf_counter()
            self._connect(engines, pool.cfg.tensor_parallel_size)
            receiving = [a.receive_stream.remote(self.plan, pool.version) for a in engines]
            sending = self.learners.stream_send()
            seconds, failed = [], {}
            for i, ref in zip(indices, receiving, strict=True):
                try:
                    seconds.append(ray.get(ref))
                except ACTOR_FAILURES:
                    failed[i] = "died"
                except ray.exceptions.RayTaskError as e:
                    log.warning("weight stream: engine %d did not take v%d: %s", i, pool.version, e)
                    failed[i] = "did not take the streamed weights"
            try:
                stats = gather(sending)[0]
            except ACTOR_FAILURES:
                raise  # a learner rank died: the run restarts from its checkpoint
            except ray.exceptions.RayTaskError:
                if not failed:
                    raise
                stats = None
            if not failed:
                log.info(
                    "weights v%d streamed to %d engine(s): %.1f MB in %d units, %.3f s",
                    pool.version,
                    len(engines),
                    stats["bytes"] / 1e6,
                    stats["units"],
                    time.perf_counter() - start,
                )
                return seconds
            self._members = None
            if attempt == self.attempts:
                break
            for i, why in failed.items():  # a fresh engine; the next attempt loads it with the others
                pool.restart(i, why)
        message = f"engines {sorted(failed)} did not take weights v{pool.version} in {self.attempts} attempts"
        raise RuntimeError(f"weight stream: {message}")
