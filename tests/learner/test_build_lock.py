"""A JIT build of DeepSpeed's CPU comm op that was killed leaves a ``lock`` file behind, and torch's loader
waits on it forever: every later learner hung in setup (seen here: two LearnerActor.setup processes idle
for ten minutes after a killed benchmark). The learner removes such a lock when it is older than any
build takes, and leaves a live build's alone."""

from __future__ import annotations

import os
import time

from learner.rank import STALE_BUILD_LOCK_S, clear_stale_build_lock


def test_a_stale_build_lock_is_removed_and_a_live_one_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert clear_stale_build_lock("kvrl_op") is None  # no lock: nothing to do
    lock = tmp_path / "kvrl_op" / "lock"
    lock.parent.mkdir(exist_ok=True)
    lock.touch()  # a build running now
    assert clear_stale_build_lock("kvrl_op") is None and lock.exists()
    old = time.time() - STALE_BUILD_LOCK_S - 60
    os.utime(lock, (old, old))  # the same lock, left by a build killed 11 minutes ago
    assert clear_stale_build_lock("kvrl_op") == lock and not lock.exists()
