"""The run lifecycle both drivers share (runkit/lifecycle.py), with stand-in drivers: checkpoints whole or
not at all, resume points, restarts after a lost actor, SIGTERM. The real drivers on Ray are tested in
tests/sft/test_sft_resume.py and tests/rl/test_faults.py."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from runkit import lifecycle
from runkit.lifecycle import STATE_FILE, ActorLost, Checkpoints, RunStopped, resume_point


class Lost(Exception):
    """Stands in for Ray's actor-died errors."""


def fill_with(text: str):
    def fill(folder: Path) -> None:
        folder.mkdir()
        (folder / "weights.bin").write_text(text)

    return fill


def test_a_failed_write_keeps_the_previous_checkpoint_and_says_where_to_resume(tmp_path):
    ckpts = Checkpoints(tmp_path, keep=2)
    first = ckpts.write("step_1", fill_with("one"), {"step": 1})

    def full_disk(folder: Path) -> None:
        folder.mkdir()
        (folder / "weights.bin").write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(RunStopped) as stopped:
        ckpts.write("step_2", full_disk, {"step": 2})
    assert str(stopped.value).startswith("checkpoint step_2 could not be written (OSError: [Errno 28]")
    assert f"The last checkpoint is {first}: continue with trainer.resume={tmp_path}" in str(stopped.value)
    assert sorted(p.name for p in ckpts.root.iterdir()) == ["latest", "step_1"]  # nothing half-written
    assert ckpts.latest() == first and (first / "weights.bin").read_text() == "one"


@pytest.mark.parametrize("error", [Lost("actor died"), KeyboardInterrupt()])
def test_a_lost_actor_or_an_interrupt_passes_through_as_it_is(tmp_path, error):
    ckpts = Checkpoints(tmp_path, keep=2, passthrough=(Lost,))

    def dies(folder: Path) -> None:
        folder.mkdir()
        raise error

    with pytest.raises(type(error)):
        ckpts.write("step_1", dies, {"step": 1})
    assert ckpts.latest() is None and not any(ckpts.root.iterdir())


def test_only_the_newest_checkpoints_stay_and_resume_finds_the_latest(tmp_path):
    ckpts = Checkpoints(tmp_path, keep=2)
    for step in (1, 2, 3):
        ckpts.write(f"step_{step}", fill_with(str(step)), {"step": step})
    assert sorted(p.name for p in ckpts.root.iterdir()) == ["latest", "step_2", "step_3"]
    assert resume_point(tmp_path) == (ckpts.root / "step_3", {"step": 3})  # a run directory
    assert resume_point(ckpts.root / "step_2") == (ckpts.root / "step_2", {"step": 2})  # a checkpoint
    with pytest.raises(FileNotFoundError, match="neither a checkpoint nor a run directory"):
        resume_point(tmp_path / "elsewhere")


class StandIn:
    """A driver that loses an actor at step ``dies_at`` (once per entry in ``deaths``)."""

    actor_failures = (Lost,)

    def __init__(self, run_dir: Path, resume: str | None, deaths: list[int], log: list):
        self.run_dir, self.deaths, self.log = run_dir, deaths, log
        self.checkpoints = Checkpoints(run_dir, keep=2, passthrough=(Lost,))
        self.step = json.loads((Path(resume) / STATE_FILE).read_text())["step"] if resume else 0
        log.append(("build", self.step))

    def start(self) -> None:
        self.log.append(("start", self.step))

    def fit(self) -> None:
        while self.step < 4:
            self.step += 1
            self.checkpoints.write(f"step_{self.step}", fill_with(str(self.step)), {"step": self.step})
            if self.deaths and self.step == self.deaths[0]:
                self.deaths.pop(0)
                raise Lost("rank 1 died")

    def close(self) -> None:
        self.log.append(("close", self.step))

    def resume_hint(self) -> str:
        return self.checkpoints.resume_hint()


def test_a_lost_actor_restarts_the_run_from_its_last_checkpoint(tmp_path):
    log: list = []
    deaths = [2]  # one death, shared by every build of the run
    driver = lifecycle.run(lambda r: StandIn(tmp_path, r, deaths, log), None, max_restarts=1)
    assert driver.step == 4
    assert log == [("build", 0), ("start", 0), ("close", 2), ("build", 2), ("start", 2), ("close", 4)]


def test_without_restarts_left_a_lost_actor_stops_the_run_naming_its_checkpoint(tmp_path):
    log: list = []
    deaths = [2, 3]  # the restarted run loses an actor again
    with pytest.raises(ActorLost) as lost:
        lifecycle.run(lambda r: StandIn(tmp_path, r, deaths, log), None, max_restarts=1)
    assert lost.value.checkpoint == tmp_path / "checkpoints" / "step_3"
    assert "an actor died and the run cannot go on without it (Lost: rank 1 died)" in str(lost.value)
    assert f"continue with trainer.resume={tmp_path}" in str(lost.value)
    assert [e for e in log if e[0] == "close"] == [("close", 2), ("close", 3)]  # closed every time


def test_sigterm_stops_the_run_with_the_resume_hint_and_closes_it(tmp_path):
    log: list = []

    class Terminated(StandIn):
        def fit(self) -> None:
            self.checkpoints.write("step_1", fill_with("1"), {"step": 1})
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunStopped, match=r"SIGTERM received\. The last checkpoint is .*step_1"):
        lifecycle.run(lambda r: Terminated(tmp_path, r, [], log), None, max_restarts=3)
    assert log[-1][0] == "close"
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the run's only while it runs


def test_a_new_run_will_not_write_over_another(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError, match=f"continue it with trainer.resume={tmp_path}"):
        lifecycle.check_fresh(tmp_path)
