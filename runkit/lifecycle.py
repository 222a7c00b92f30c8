"""One run lifecycle for every training driver (RL and SFT alike).

A driver is an object with ``run_dir``, ``start()`` (Ray, placement, actors: nothing starts in its
constructor), ``fit()`` (the loop, which checkpoints through a :class:`Checkpoints`), ``close()`` (safe
to call after a failed or partial ``start``), ``resume_hint()`` and ``actor_failures`` (the exception
types that mean an actor or its node is gone). :func:`run` owns the rest:

- a lost actor becomes :class:`ActorLost` naming the last checkpoint, and the run builds itself again
  from that checkpoint, up to ``max_restarts`` times;
- SIGTERM (pre-emption, ``ray job stop``) becomes :class:`RunStopped` with the resume hint, raised
  between two Python steps so the actors are shut down and a checkpoint being written is either whole
  or removed;
- ``close()`` runs whatever happens.

Checkpoints are directories under ``run_dir/checkpoints`` written beside their final name and renamed
into place, with ``checkpoints/latest`` naming the newest whole one; ``trainer.resume`` takes either a
checkpoint or a run directory. This module imports no kvrl package, torch or Ray.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from runkit.files import atomic_write, replacing

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"  # a checkpoint's driver state: step, sampler, seed, learner layout


class RunStopped(RuntimeError):
    """The run stopped before its end; the message says where it can continue from."""


class ActorLost(RunStopped):
    """An actor (or its node) died; ``checkpoint`` is the one to continue from, if any was written."""

    def __init__(self, message: str, checkpoint: Path | None):
        super().__init__(message)
        self.checkpoint = checkpoint


class Driver(Protocol):
    run_dir: Path
    actor_failures: tuple[type[BaseException], ...]

    def start(self) -> None: ...
    def fit(self) -> Any: ...
    def close(self) -> None: ...
    def resume_hint(self) -> str: ...


def reason(e: BaseException) -> str:
    """``Type: first line`` of an error; for an error raised inside an actor, of the original one."""
    cause = getattr(e, "cause", None)  # Ray's task errors keep the actor's exception here
    e = cause if isinstance(cause, BaseException) else e
    text = str(e).strip()
    actor = re.search(r"class_name: (\w+)", text)  # Ray's actor errors name the actor's class
    where = f" in {actor.group(1)}" if actor else ""
    return f"{type(e).__name__}{where}: {text.splitlines()[0]}" if text else type(e).__name__


class Checkpoints:
    """``run_dir/checkpoints/<name>/``, each appearing whole or not at all; the newest ``keep`` stay.

    ``passthrough``: exception types a failed write re-raises as they are (a lost actor must stay one, so
    the run can restart); any other failure (a full disk, a failing mount) becomes :class:`RunStopped`
    and leaves the previous checkpoints as they were.
    """

    def __init__(self, run_dir: Path, keep: int, passthrough: tuple[type[BaseException], ...] = ()):
        if keep < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
        self.root, self.keep, self.passthrough = Path(run_dir) / "checkpoints", keep, passthrough

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        return self.root / pointer.read_text().strip() if pointer.exists() else None

    def resume_hint(self) -> str:
        last = self.latest()
        if last is None:
            return "No checkpoint was written yet."
        return f"The last checkpoint is {last}: continue with trainer.resume={self.root.parent}"

    def write(self, name: str, fill: Callable[[Path], None], state: dict[str, Any]) -> Path:
        """``fill(folder)`` writes the checkpoint's files; ``state`` goes to its :data:`STATE_FILE`."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / name
        try:
            with replacing(final) as partial:
                fill(partial)
                (partial / STATE_FILE).write_text(json.dumps(state))
            atomic_write(self.root / "latest", name)
        except BaseException as e:  # SIGTERM's included; ``replacing`` has removed the partial one
            if isinstance(e, (*self.passthrough, RunStopped)) or not isinstance(e, Exception):
                raise
            raise RunStopped(
                f"checkpoint {name} could not be written ({reason(e)}). {self.resume_hint()}"
            ) from e
        whole = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.endswith(".partial"))
        for stale in whole[: -self.keep]:
            shutil.rmtree(stale, ignore_errors=True)
        return final


def resume_point(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to resume from (a checkpoint directory, or a run directory's latest) and its state."""
    p = Path(path)
    if not (p / STATE_FILE).exists():
        latest = Checkpoints(p, keep=1).latest()
        if latest is None or not (latest / STATE_FILE).exists():
            raise FileNotFoundError(
                f"trainer.resume: {path} is neither a checkpoint nor a run directory with one"
            )
        p = latest
    return p, json.loads((p / STATE_FILE).read_text())


def check_fresh(run_dir: Path) -> None:
    """A new run may not write over another's metrics: continuing one is ``trainer.resume``."""
    if (Path(run_dir) / "metrics.jsonl").exists():
        raise FileExistsError(
            f"trainer.output_dir: {run_dir} already holds a run; continue it with "
            f"trainer.resume={run_dir}, or choose another trainer.output_dir"
        )


@contextmanager
def stop_on_sigterm(hint: Callable[[], str]) -> Iterator[None]:
    """Turn SIGTERM into :class:`RunStopped` (with ``hint()``) while the block runs; a second SIGTERM ends
    the process at once. Outside the main thread (where Python allows no handler) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise RunStopped(f"SIGTERM received. {hint()}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(
    build: Callable[[str | None], Driver],
    resume: str | None,
    max_restarts: int,
    on_start: Callable[[Driver], None] | None = None,
) -> Driver:
    """Build a driver (resuming from ``resume``, if given), start it and fit it; after a lost actor,
    build it again from its last checkpoint, up to ``max_restarts`` times. ``on_start(driver)`` runs
    once its actors are up (the CLI prints where the run writes)."""
    if max_restarts < 0:
        raise ValueError(f"trainer.max_restarts must be >= 0, got {max_restarts}")
    restarts = 0
    while True:
        driver = build(resume)
        try:
            driver.start()  # SIGTERM's handler goes in after ray.init, whose own would abort the driver
            with stop_on_sigterm(driver.resume_hint):
                if on_start is not None:
                    on_start(driver)
                driver.fit()
            return driver
        except driver.actor_failures as e:
            lost = ActorLost(
                f"an actor died and the run cannot go on without it ({reason(e)}); its node may be lost. "
                + driver.resume_hint(),
                Checkpoints(driver.run_dir, keep=1).latest(),
            )
            if restarts == max_restarts or lost.checkpoint is None:
                raise lost from e
            restarts += 1
            log.warning("restart %d of %d from %s after: %s", restarts, max_restarts, lost.checkpoint, lost)
            resume = str(lost.checkpoint)
        finally:
            driver.close()
