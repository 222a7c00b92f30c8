"""Rollout actors (one vLLM engine each) and the pool that shares a batch among them by load.

The pool hands out small chunks of requests: an actor gets its next chunk when it returns the last,
so a slow actor takes fewer chunks instead of holding the others. An actor that dies mid-chunk is
replaced by a fresh one (loaded with the latest weights), and its chunk goes back to the queue:
every request comes back exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError

from actors.memory import rss_mb
from actors.placement import ACTOR_FAILURES, pin_threads
from rollout.engine import EngineConfig
from rollout.schedule import RolloutQueue, ScheduleConfig, rollout_metrics
from rollout.trajectory import RepeatConfig, Trajectory
from rollout.worker import EngineStats, RolloutRequest, RolloutResult, SamplingConfig

log = logging.getLogger(__name__)


class RolloutUnavailable(RuntimeError):
    """A dead rollout actor could not be replaced (e.g. its node is gone and no other has its resources)."""


@ray.remote
class RolloutActor:
    def __init__(self, cfg: EngineConfig, cores: Sequence[int] = ()):
        pin_threads(cores, "rollout_cores")
        # Several engines share the node's cores; don't let each pin threads to all of them.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        from rollout.worker import RolloutWorker  # after the variable above: vLLM reads it as it loads

        self.worker = RolloutWorker(cfg)

    def generate(self, requests: list[RolloutRequest], sampling: SamplingConfig) -> list[RolloutResult]:
        return self.worker.generate(requests, sampling)

    def extend(
        self,
        trajectories: list[Trajectory],
        sampling: SamplingConfig,
        max_new: int | None,
        version: int,
        repeat: RepeatConfig | None,
    ) -> tuple[list[Trajectory], EngineStats]:
        out = self.worker.extend(trajectories, sampling, max_new, version, repeat)
        return out, self.worker.stats

    def update_weights(self, state: dict, version: int) -> float:
        return self.worker.update_weights(state, version)

    def join_stream(self, init: dict) -> None:
        self.worker.join_stream(init)

    def receive_stream(self, update: dict, version: int) -> float:
        return self.worker.receive_stream(update, version)

    def weights_version(self) -> int:
        return self.worker.weights_version

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def rss_mb(self) -> float:
        return rss_mb()


class RolloutPool:
    def __init__(
        self,
        cfg: EngineConfig,
        num_actors: int,
        actor_options: Sequence[dict[str, Any]] | None = None,
        chunk_size: int = 4,
        max_attempts: int = 3,
        start_timeout_s: float = 600.0,
        cores: Sequence[int] = (),
        version: int = 0,
    ):
        """``cores``: CPU ids every engine's threads are pinned to (``resources.rollout_cores``);
        ``version``: the policy version of ``cfg.model`` (a resumed run's iteration), counted up by syncs."""
        if num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        self.cfg, self.chunk_size, self.max_attempts = cfg, chunk_size, max_attempts
        self.start_timeout_s, self.cores = start_timeout_s, list(cores)
        self._options = list(actor_options or [{}] * num_actors)
        self.actors = [self._start(i) for i in range(num_actors)]
        ray.get([a.weights_version.remote() for a in self.actors])  # wait until every engine is up
        log.info("rollout pool up: %d engine(s)", num_actors)
        self.version = version  # the policy the engines hold
        self._state_ref: ray.ObjectRef | None = None  # the latest weights: a full state, or
        self._stream = None  # the stream that sent them (actors/stream.py), for a replacement
        self._unloaded: set[int] = set()  # replacements waiting for the next sync (see _replace)
        self.replaced = 0
        self.closed = False
        self.inflight = 0  # chunks being generated right now (for monitoring and tests)
        # the last extend's engine calls, each its own EngineStats and wall time (cost fits:
        # benchmarks/longtail.py)
        self.call_stats: list[dict] = []

    def _start(self, i: int):
        return RolloutActor.options(**self._options[i]).remote(self.cfg, self.cores)

    def restart(self, i: int, why: str = "died") -> None:
        """A fresh engine in place of actor ``i`` (dead or not trusted), with the weights it starts
        from; raises :class:`RolloutUnavailable` if it does not come up in time."""
        if self.closed:
            raise RolloutUnavailable("the rollout pool is shut down")
        log.warning("rollout actor %d %s; starting a replacement", i, why)
        with contextlib.suppress(Exception):  # it may be gone already
            ray.kill(self.actors[i])
        self.actors[i] = self._start(i)
        # A replacement whose bundle has no node left would wait forever: give it a deadline.
        try:
            ray.get(self.actors[i].weights_version.remote(), timeout=self.start_timeout_s)
        except (GetTimeoutError, *ACTOR_FAILURES) as e:
            raise RolloutUnavailable(
                f"rollout actor {i} died and its replacement did not start within {self.start_timeout_s:g} s "
                "(is its node lost, with no other node holding its resources?)"
            ) from e
        self.replaced += 1

    def _replace(self, i: int) -> None:
        """Replace a dead actor ``i`` and load it with the latest weights.

        Streamed weights are not kept anywhere but on the learners, which may have trained past them
        (a pipelined run samples ahead while they learn): a replacement then takes no work until the
        next sync loads it with the others, and the engines that hold the pool's version sample its
        share with the same seeds. Only when no such engine is left does it take the learners' weights
        at once (the samples it draws are then of a newer policy than their version says)."""
        self.restart(i)
        if self._stream is not None:
            if len(self._unloaded | {i}) < len(self.actors):
                self._unloaded.add(i)
                log.info("rollout actor %d: idle until the next weight sync loads it", i)
                return
            log.warning(
                "rollout actor %d: no engine holds weights v%d; streaming the learners' now", i, self.version
            )
            self._stream.send(self, [i])
            self._unloaded.discard(i)
        elif self._state_ref is not None:
            ray.get(self.actors[i].update_weights.remote(self._state_ref, self.version))

    def generate(self, requests: Sequence[RolloutRequest], sampling: SamplingConfig) -> list[RolloutResult]:
        """Results in request order; each request is generated exactly once across the pool.

        A chunk whose actor dies is retried on a fresh actor, at most ``max_attempts`` times in all, so
        a request that kills every engine it meets stops the batch with its ids instead of looping.
        """
        chunks = [list(requests[i : i + self.chunk_size]) for i in range(0, len(requests), self.chunk_size)]
        queue = deque((chunk, 1) for chunk in chunks)
        results: dict[str, RolloutResult] = {}
        running: dict[ray.ObjectRef, tuple[int, list[RolloutRequest], int]] = {}
        while queue or running:
            busy = {i for i, _, _ in running.values()}
            for i in range(len(self.actors)):
                if i not in busy and i not in self._unloaded and queue:
                    chunk, attempt = queue.popleft()
                    running[self.actors[i].generate.remote(chunk, sampling)] = (i, chunk, attempt)
            self.inflight = len(running)
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                i, chunk, attempt = running.pop(ref)
                try:
                    for r in ray.get(ref):
                        results[r.request_id] = r
                except ACTOR_FAILURES as e:
                    self._replace(i)
                    if attempt >= self.max_attempts:
                        ids = [r.request_id for r in chunk]
                        raise RuntimeError(
                            f"rollout requests {ids} killed {attempt} engines; giving up"
                        ) from e
                    queue.appendleft((chunk, attempt + 1))
        self.inflight = 0
        return [results[r.request_id] for r in requests]

    def extend(
        self,
        trajectories: Sequence[Trajectory],
        sampling: SamplingConfig,
        schedule: ScheduleConfig,
        version: int,
        repeat: RepeatConfig | None = None,
    ) -> tuple[list[Trajectory], dict[str, float]]:
        """Continue every trajectory until it finishes or spends its ``budget``, scheduled by
        ``schedule`` (``rollout/schedule.py``); new tokens are marked as sampled by policy ``version``.

        Returns the trajectories in the order given, and the rollout's metrics (lengths, tail time, busy
        slots). A batch whose actor dies runs again on a fresh one, at most ``max_attempts`` times.
        """
        queue = RolloutQueue(trajectories, schedule, self.chunk_size, len(self.actors))
        running: dict[ray.ObjectRef, tuple[int, list[Trajectory], int]] = {}
        attempts: dict[str, int] = {}
        total = EngineStats()
        self.call_stats = []
        calls = chunked = 0
        sent: dict[ray.ObjectRef, float] = {}  # when each call was made
        start = time.perf_counter()
        while queue.pending() or running:
            busy = {i for i, _, _ in running.values()}
            for i in range(len(self.actors)):
                if i in busy or i in self._unloaded or not queue.pending():
                    continue
                batch = queue.take(self.cfg.max_num_seqs)
                attempt = 1 + max(attempts.get(t.key, 0) for t in batch)
                calls += 1
                chunked += queue.max_new is not None
                ref = self.actors[i].extend.remote(batch, sampling, queue.max_new, version, repeat)
                running[ref] = (i, batch, attempt)
                sent[ref] = time.perf_counter()
            self.inflight = len(running)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            i, batch, attempt = running.pop(ref)
            try:
                returned, stats = ray.get(ref)
            except ACTOR_FAILURES as e:
                self._replace(i)
                if attempt >= self.max_attempts:
                    keys = [t.key for t in batch]
                    message = f"rollout trajectories {keys} killed {attempt} engines; giving up"
                    raise RuntimeError(message) from e
                attempts.update({t.key: attempt for t in batch})
                sent.pop(ref, None)
                queue.put_back(batch, None)
                continue
            total.add(stats)
            self.call_stats.append({**stats.__dict__, "wall_s": time.perf_counter() - sent.pop(ref)})
            queue.put_back(batch, returned)
        self.inflight = 0
        seconds = time.perf_counter() - start
        slots = len(self.actors) * self.cfg.max_num_seqs
        results = queue.results()
        metrics = rollout_metrics(queue.finished_here(), seconds, total.slot_seconds, slots)
        metrics["rollout_engine_steps"] = float(total.steps)
        metrics["rollout_tokens_per_seq_step"] = total.tokens / max(total.seq_steps, 1)
        metrics["rollout_chunked_call_share"] = chunked / max(calls, 1)  # divided: calls cut at a chunk
        if total.draft_tokens:
            metrics["spec_acceptance"] = total.accepted_tokens / total.draft_tokens
        if self.cfg.speculative_tokens:  # sequence-steps that verified a draft
            metrics["spec_draft_share"] = total.drafts / max(total.seq_steps, 1)
            metrics["spec_accepted_per_draft"] = total.accepted_tokens / max(total.drafts, 1)
        return results, metrics

    def rss_mb(self) -> list[float]:
        """Host memory of each engine's actor, MiB."""
        return ray.get([a.rss_mb.remote() for a in self.actors])

    def update_weights(self, state_ref: ray.ObjectRef) -> list[float]:
        """Load new weights into every engine (in place); returns each engine's load seconds.

        An engine found dead here (it died idle, after its batch was done, as one sampling ahead in a
        pipelined run may) is replaced, and the replacement starts from these weights.
        """
        self.version += 1
        self._state_ref, self._stream = state_ref, None
        self._unloaded.clear()  # every engine takes these weights below, a replacement included
        start = time.perf_counter()
        refs = [a.update_weights.remote(state_ref, self.version) for a in self.actors]
        seconds = []
        for i, ref in enumerate(refs):
            try:
                seconds.append(ray.get(ref))
            except ACTOR_FAILURES:
                began = time.perf_counter()
                self._replace(i)  # loads self._state_ref at self.version
                seconds.append(time.perf_counter() - began)
        log.info(
            "weights v%d synced to %d engines in %.3f s",
            self.version,
            len(self.actors),
            time.perf_counter() - start,
        )
        return seconds

    def stream_weights(self, stream) -> list[float]:
        """Stream new weights from the learners into every engine (``actors/stream.py``); each engine's
        receive seconds. Engines that die on the way are replaced and streamed to again."""
        self.version += 1
        self._state_ref, self._stream = None, stream
        seconds = stream.send(self, range(len(self.actors)))
        self._unloaded.clear()
        return seconds

    def shutdown(self) -> None:
        self.closed = True  # a call still running (a rollout sampling ahead) fails instead of restarting
        for a in self.actors:
            ray.kill(a)
