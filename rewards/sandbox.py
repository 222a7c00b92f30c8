"""Run verifier calls in worker processes with wall-time, CPU-time and memory limits and no network.

Model outputs are hostile: a power tower, a regex bomb or a user verifier with a bug must cost the
sample its reward, never the run. Each worker is a spawned process with an address-space limit
(``RLIMIT_AS``) and, per call, a CPU-time budget (``RLIMIT_CPU``, counted over all its threads). A call
that runs past ``timeout_s`` gets its worker killed and replaced; a worker that dies (segfault,
``os._exit``, out of memory, over its CPU time) is replaced too. Either way the sample scores 0 and the
reason is recorded in its :class:`~rewards.verdict.Verdict`.

Workers have no network: where the kernel allows it each one moves into an empty network namespace
(``unshare``), and always a Python-level guard makes ``socket`` connect/bind/send/resolve calls raise
:class:`PermissionError`. The guard alone is best effort (C extensions and ``_socket`` bypass it),
which is why the namespace is tried first.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import multiprocessing as mp
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from .extract import DEFAULT_MAX_CHARS
from .verdict import Verdict
from .verifiers import DEFAULT_VERIFIER

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Task:
    """One verification: ``verifier`` names a built-in, ``module:function`` or an entry point (with an
    optional ``@style``); ``prompt`` (the question) and ``row`` (the data set row) are for verifiers
    written to another framework's contract (``rewards/styles.py``), ``style`` is the one to call it in
    (None: its suffix or detected), ``threshold`` the score that counts as correct."""

    response: str
    gold: str
    verifier: str = DEFAULT_VERIFIER
    prompt: str = ""
    row: str = ""  # the row as JSON text: a Task stays hashable (evaluations key their caches by it)
    style: str | None = None
    threshold: float = 1.0


def problem_task(
    response: str,
    gold,
    verifier: str,
    prompt: str = "",
    row: dict | None = None,
    style: str | None = None,
    threshold: float = 1.0,
) -> Task:
    """A :class:`Task` for one data set row: its question as ``prompt`` and the row (``images`` left
    out: they stay out of the workers) as JSON, for verifiers written to another framework's contract."""
    row = {k: v for k, v in (row or {}).items() if k != "images"}
    text = json.dumps(row, default=str, ensure_ascii=False) if row else ""
    return Task(response, str(gold), verifier, prompt, text, style, threshold)


NETWORK_DISABLED = "network access is disabled in the verifier sandbox"
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


def _refuse_network(*args, **kwargs):
    raise PermissionError(NETWORK_DISABLED)


def _cut_network() -> str:
    """Cut this process off the network; returns which mechanism applied (the pool logs it)."""
    # Root may create a network namespace directly; others need a user namespace around it. Clusters
    # often forbid both (seccomp, sysctl), so a refusal is expected, not an error.
    candidates = [_CLONE_NEWNET] if os.geteuid() == 0 else []
    candidates.append(_CLONE_NEWUSER | _CLONE_NEWNET)
    mechanism = "python socket guard only"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        uid, gid = os.getuid(), os.getgid()
        for flags in candidates:
            if libc.unshare(flags) == 0:
                if flags & _CLONE_NEWUSER:
                    _map_own_ids(uid, gid)
                mechanism = "empty network namespace (unshare) + python socket guard"
                break
            mechanism += f" (unshare {flags:#x}: {os.strerror(ctypes.get_errno())})"
    except (OSError, AttributeError) as e:  # no libc or no unshare symbol (not Linux)
        mechanism += f" (unshare unavailable: {e})"
    # Always installed: a fallback where unshare is refused, and a clear error message where it is not.
    for name in ("connect", "connect_ex", "sendto", "bind"):
        setattr(socket.socket, name, _refuse_network)
    socket.create_connection = socket.getaddrinfo = _refuse_network
    return mechanism


def _map_own_ids(uid: int, gid: int) -> None:
    """Inside a fresh user namespace we would be 'nobody'; map our own ids so ownership checks on
    caches and temp files behave as outside. Best effort: an unmapped worker still works."""
    with contextlib.suppress(OSError):
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{uid} {uid} 1"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)


def _set_cpu_budget(cpu_s: int) -> None:
    """Allow the coming call ``cpu_s`` more CPU seconds. The limit counts the process's whole life, so it
    moves forward per call: a long-lived worker serving many cheap calls must not run out."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime) + cpu_s
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    # Only the soft limit moves (SIGXCPU); an unprivileged process could not raise a lowered hard limit
    # again. Code that ignores SIGXCPU still meets the wall-time timeout.
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _worker_main(conn: Connection, memory_bytes: int, max_chars: int, cpu_s: int) -> None:
    import resource

    # Before anything else runs here, so no verifier (or import) ever sees the network.
    network = _cut_network()
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # SIGXCPU's default action dumps core; a core of a multi-GiB worker is not worth the disk.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from .registry import resolve_verifier  # only now: verifiers load with the network cut, limits set
    from .verdict import verify_response

    resolve_verifier(DEFAULT_VERIFIER)
    from math_verify import parse  # noqa: F401  (import sympy & co. before the first timed call)

    conn.send(("ready", network))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        task_id, task = msg
        _set_cpu_budget(cpu_s)
        try:
            verdict = verify_response(
                task.response,
                task.gold,
                task.verifier,
                max_chars,
                prompt=task.prompt,
                row=json.loads(task.row) if task.row else None,
                style=task.style,
                threshold=task.threshold,
            )
        except BaseException as e:  # MemoryError, RecursionError, UnknownVerifier ...
            verdict = Verdict(False, None, False, f"{type(e).__name__}: {e}"[:500])
        try:
            conn.send((task_id, verdict))
        except (MemoryError, OSError):
            return


class _Worker:
    def __init__(self, ctx, memory_bytes: int, max_chars: int, cpu_s: int):
        self.conn, child = ctx.Pipe()
        args = (child, memory_bytes, max_chars, cpu_s)
        self.process = ctx.Process(target=_worker_main, args=args, daemon=True)
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
    """A pool of sandboxed verifier processes. Use as a context manager, or call :meth:`close`.

    ``cpu_time_s`` is the CPU time one call may use (default ``max(60, 10 * timeout_s)``): it catches
    verifiers that burn several cores at once, which the wall-time limit alone lets through.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 10.0,
        memory_mb: int = 2048,
        max_chars: int = DEFAULT_MAX_CHARS,
        cpu_time_s: int | None = None,
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if cpu_time_s is not None and cpu_time_s < 1:
            raise ValueError(f"cpu_time_s must be >= 1, got {cpu_time_s}")
        self.timeout_s = timeout_s
        self.cpu_time_s = int(cpu_time_s) if cpu_time_s is not None else math.ceil(max(60.0, 10 * timeout_s))
        self._memory_bytes = int(memory_mb) * 1024 * 1024
        self._max_chars = max_chars
        self._ctx = mp.get_context("spawn")
        self._workers = [self._spawn() for _ in range(workers)]
        self.replaced = 0  # workers killed for timeouts or found dead

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self._memory_bytes, self._max_chars, self.cpu_time_s)

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
            reason = f"verifier process died (exit code {code})"
            cpu_limit = f"CPU-time limit of {self.cpu_time_s} s"
            if code == -signal.SIGXCPU:
                reason = f"verifier exceeded its {cpu_limit} (SIGXCPU)"
            elif code == -signal.SIGKILL:  # the kernel's hard RLIMIT_CPU and the OOM killer both send it
                reason = f"verifier process killed (SIGKILL: {cpu_limit} or out of memory)"
            if w.task_id is not None:
                results[w.task_id] = Verdict(False, None, False, f"{reason}; worker replaced")
            log.warning("%s on task %s; replacing its worker", reason, w.task_id)
            self._replace(w)
            return
        if isinstance(msg, tuple) and msg[0] == "ready":
            w.ready = True
            log.debug("verifier worker %d ready; network cut by %s", w.process.pid, msg[1])
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
