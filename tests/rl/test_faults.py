"""Faults in a running `kvrl rl` on the tiny model: a learner rank killed (the run stops resumably, or
restarts by itself), a full disk, bad config values. Nothing is lost, nothing is left. SIGTERM while a
checkpoint is written is tested with the exact resume that follows it (tests/rl/test_trainer.py)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from tests.helpers import (
    ROOT,
    assert_nothing_left,
    kvrl_here,
    loads_in_learner,
    marked,
    start_run,
    wait_until,
)


def latest(run: Path) -> str | None:
    path = run / "checkpoints" / "latest"
    return path.read_text().strip() if path.exists() else None


def iterations(run: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def kill_learner_rank(marker: str, rank_index: int = 1) -> None:
    ranks = sorted(
        (p for p in marked(marker) if "LearnerActor" in " ".join(p.cmdline())), key=lambda p: p.create_time()
    )
    assert len(ranks) == 2, [" ".join(p.cmdline()) for p in ranks]
    ranks[rank_index].kill()


@pytest.mark.slow
@pytest.mark.fault
def test_killed_learner_rank_stops_resumably_then_restarts_by_itself(tiny_dir, tmp_path):
    run, log = tmp_path / "run", tmp_path / "rl.log"
    proc, marker = start_run("rl", tiny_dir, run, log, "trainer.iterations=3")
    wait_until(lambda: latest(run) is not None, proc, log)
    kill_learner_rank(marker)
    assert proc.wait(timeout=600) == 1
    text = log.read_text()
    assert "kvrl rl: stopped: an actor died and the run cannot go on without it" in text, text[-3000:]
    assert "Error in LearnerActor: " in text
    assert f"continue with trainer.resume={run}" in text
    assert_nothing_left(marker)
    stopped_at = latest(run)
    loads_in_learner(run / "checkpoints" / stopped_at)

    # Resumed with one restart allowed: a rank killed again is replaced from the last checkpoint.
    proc, marker = start_run(
        "rl", tiny_dir, run, log, "trainer.iterations=4", f"trainer.resume={run}", "trainer.max_restarts=1"
    )
    wait_until(lambda: latest(run) != stopped_at, proc, log)
    kill_learner_rank(marker)
    assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    assert "restart 1 of 1 from" in log.read_text()
    assert iterations(run) == [0, 1, 2, 3]  # every iteration once: rows after the checkpoint were redone
    assert latest(run) == "iter_00003"
    assert_nothing_left(marker)


@pytest.mark.fault
def test_full_disk_on_checkpoint_keeps_the_previous_one(tiny_dir, tiny_trainer, tmp_path):
    import shutil

    from runkit.lifecycle import RunStopped, resume_point

    run = tmp_path / "run"
    root = run / "checkpoints"
    shutil.copytree(tiny_dir, root / "iter_00000")
    (root / "iter_00000" / "trainer_state.json").write_text(json.dumps({"iteration": 0}))
    (root / "latest").write_text("iter_00000")

    class FullDisk:  # the learner group's export as a full disk ends it: some bytes, then ENOSPC
        def export_hf(self, out_dir):
            Path(out_dir).mkdir(parents=True)
            (Path(out_dir) / "model.safetensors").write_bytes(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    trainer = tiny_trainer("trainer.iterations=5")
    trainer.learners = FullDisk()
    with pytest.raises(RunStopped) as stopped:
        trainer.checkpoint(1)
    message = str(stopped.value)
    assert message.startswith("checkpoint iter_00001 could not be written (OSError: [Errno 28] No space left")
    assert f"The last checkpoint is {root / 'iter_00000'}: continue with trainer.resume={run}" in message
    assert sorted(p.name for p in root.iterdir()) == ["iter_00000", "latest"]  # nothing half-written left
    assert resume_point(run)[0] == root / "iter_00000"
    loads_in_learner(root / "iter_00000")


@pytest.mark.fault
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_restarts=-1", "trainer: max_restarts must be >= 0, got -1"),
        ("rewards.cpu_time_s=0", "rewards: cpu_time_s must be >= 1, got 0"),
        ("resources.learner_ranks=zero", "resources.learner_ranks: expected an integer, got 'zero'"),
        ("learner.zero_stage=4", "learner.zero_stage: 4 is not one of"),
    ],
)
def test_bad_config_value_fails_before_anything_starts(tiny_dir, tmp_path, capsys, override, message):
    # in this process: the subject is the message and the code `kvrl` exits with, not the process (a
    # real process's exit 2 on a bad config: tests/kvrl/test_demo.py's failing stage)
    run = tmp_path / "run"
    args = [
        "rl",
        "--config",
        str(ROOT / "configs/tiny/rl.yaml"),
        f"model={tiny_dir}",
        f"trainer.output_dir={run}",
    ]
    proc = kvrl_here(*args, override, capsys=capsys)
    assert proc.returncode == 2 and f"kvrl rl: error: {message}" in proc.stderr, proc.stderr[-2000:]
    assert "Ray cluster" not in proc.stdout + proc.stderr and not run.exists()  # no Ray, no run dir
