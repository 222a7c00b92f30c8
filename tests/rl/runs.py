"""Helpers for tests that run `kvrl rl` in the background and look at what it leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

from tests.rl.test_trainer import FAST, ROOT

MARK = "KVRL_TEST_RUN"  # every process a run starts inherits it: how leftovers are found


def start_rl(
    tiny_dir, run: Path, log: Path, *overrides, fast: bool = True, env: dict | None = None
) -> tuple[subprocess.Popen, str]:
    """`kvrl rl` on the tiny config in the background (smaller with ``fast``), output to ``log``;
    returns the process and the marker its processes (and Ray's) carry in their environment."""
    marker = uuid.uuid4().hex
    cmd = [
        sys.executable, "-m", "kvrl", "rl", "--config", str(ROOT / "configs/tiny/rl.yaml"),
        f"model={tiny_dir}", f"trainer.output_dir={run}", *(FAST if fast else []), *overrides,
    ]  # fmt: skip
    env = {**os.environ, **(env or {}), MARK: marker, "PYTHONPATH": str(ROOT)}
    with open(log, "a") as out:  # a file, not a pipe: a full pipe would block the run
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, marker


def marked(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARK) == marker:
                found.append(p)
        except psutil.Error:
            continue
    return found


def assert_nothing_left(marker: str, grace_s: float = 30.0) -> None:
    deadline = time.monotonic() + grace_s
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = []
    for p in marked(marker):
        try:
            left.append((p.pid, " ".join(p.cmdline())[:120]))
        except psutil.Error:
            continue
    assert not left, f"processes left after the run exited: {left}"


def wait_until(condition, proc: subprocess.Popen, log: Path, timeout_s: float = 600, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, f"the run exited ({proc.returncode}) first:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(poll_s)
