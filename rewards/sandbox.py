"""Run verifier calls in worker processes with a wall-time and a memory limit.

Model outputs are hostile: a power tower, a regex bomb or a user verifier with a bug must cost the
sample its reward, never the run. Each worker is a spawned process with an address-space limit
(``RLIMIT_AS``). A call that runs past ``timeout_s`` gets its worker killed and replaced; a worker that
dies (segfault, ``os._exit``, out of memory) is replaced too. Either way the sample scores 0 and the
reason is recorded in its :class:`~rewards.verdict.Verdict`.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from .extract import DEFAULT_MAX_CHARS
from .verdict import Verdict

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Task:
    """One verification: ``verifier`` names a built-in, ``module:function`` or an entry point."""

    response: str
    gold: str
    verifier: str = "math"


def _worker_main(conn: Connection, memory_bytes: int, max_chars: int) -> None:
    import resource

    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    from .registry import resolve_verifier
    from .verdict import verify_response

    resolve_verifier("math")
    from math_verify import parse  # noqa: F401  (import sympy & co. before the first timed call)

    conn.send("ready")
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        task_id, task = msg
        try:
            verdict = verify_response(task.response, task.gold, task.verifier, max_chars)
        except BaseException as e:  # MemoryError, RecursionError, UnknownVerifier ...
            verdict = Verdict(False, None, False, f"{type(e).__name__}: {e}"[:500])
        try:
            conn.send((task_id, verdict))
        except (MemoryError, OSError):
            return


class _Worker:
    def __init__(self, ctx, memory_bytes: int, max_chars: int):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, memory_bytes, max_chars), daemon=True)
        self.process.start()
        child.close()
        self.started = time.monotonic()
        self.ready = False  # set when the worker has imported its verifiers
        self.task_id: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class VerifierPool:
    """A pool of sandboxed verifier processes. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 10.0,
        memory_mb: int = 2048,
        max_chars: int = DEFAULT_MAX_CHARS,
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self._memory_bytes = int(memory_mb) * 1024 * 1024
        self._max_chars = max_chars
        self._ctx = mp.get_context("spawn")
        self._workers = [self._spawn() for _ in range(workers)]
        self.replaced = 0  # workers killed for timeouts or found dead

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self._memory_bytes, self._max_chars)

    def _replace(self, worker: _Worker) -> None:
        worker.task_id = None
        worker.kill()
        self._workers[self._workers.index(worker)] = self._spawn()
        self.replaced += 1

    def verify(self, tasks: Sequence[Task]) -> list[Verdict]:
        """Verdicts in task order. Never raises for a bad response or a failing verifier."""
        results: list[Verdict | None] = [None] * len(tasks)
        pending = deque(enumerate(tasks))
        while pending or any(w.task_id is not None for w in self._workers):
            for w in self._workers:
                if w.ready and w.task_id is None and pending:
                    w.task_id, task = pending.popleft()
                    w.deadline = time.monotonic() + self.timeout_s
                    w.conn.send((w.task_id, task))
            watched = [w for w in self._workers if not w.ready or w.task_id is not None]
            deadlines = [w.deadline if w.ready else w.started + STARTUP_TIMEOUT_S for w in watched]
            ready = wait([w.conn for w in watched], timeout=max(0.0, min(deadlines) - time.monotonic()))
            for w in watched:
                if w.conn in ready:
                    self._receive(w, results)
                elif w.task_id is not None and time.monotonic() >= w.deadline:
                    results[w.task_id] = Verdict(
                        False, None, False, f"verifier timed out after {self.timeout_s:g} s; worker replaced"
                    )
                    log.warning("verifier timed out on task %d; replacing its worker", w.task_id)
                    self._replace(w)
                elif not w.ready and time.monotonic() >= w.started + STARTUP_TIMEOUT_S:
                    raise RuntimeError(f"a verifier worker did not start within {STARTUP_TIMEOUT_S} s")
        return results  # type: ignore[return-value]

    def _receive(self, w: _Worker, results: list[Verdict | None]) -> None:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            w.process.join(timeout=1)
            code = w.process.exitcode
            if w.task_id is not None:
                results[w.task_id] = Verdict(
                    False, None, False, f"verifier process died (exit code {code}); worker replaced"
                )
            log.warning("verifier worker died (exit code %s) on task %s; replacing it", code, w.task_id)
            self._replace(w)
            return
        if msg == "ready":
            w.ready = True
            return
        task_id, verdict = msg
        results[task_id] = verdict
        w.task_id = None

    def close(self) -> None:
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        for w in self._workers:
            w.process.join(timeout=2)
            w.kill()
        self._workers = []

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
