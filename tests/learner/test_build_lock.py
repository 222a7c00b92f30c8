"""A JIT build of DeepSpeed's CPU comm op that was killed leaves a ``lock`` file behind, and torch's loader
waits on it forever: every later learner hung in setup (seen here: two LearnerActor.setup processes idle
for ten minutes after a killed benchmark). The learner removes such a lock when it is older than any
build takes, and leaves a live build's alone."""

from __future__ import annotations

import os
import shutil
import sysconfig
import time
from pathlib import Path

import pytest

from learner.opbuild import STALE_BUILD_LOCK_S, clear_stale_build_lock, prepare_op_builds


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


def test_every_op_build_runs_this_environments_ninja(tmp_path, monkeypatch):
    """Debian's ninja 1.11 and pip's 1.13 hash a build command differently, so a build by one was stale to
    the other: setup.sh (PATH without the venv) built the comm op, and the first learner of the test
    cluster (PATH with it) built it again, about a minute each time."""
    scripts = Path(sysconfig.get_path("scripts"))
    if not (scripts / "ninja").exists():
        pytest.skip("this environment has no ninja of its own")
    other = tmp_path / "bin"
    other.mkdir()
    (other / "ninja").write_text("#!/bin/sh\necho 1.11.1\n")
    (other / "ninja").chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(other), "/usr/bin", "/bin", str(scripts)]))
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert prepare_op_builds() == Path(sysconfig.get_path("data")) / "torch_extensions"
    assert shutil.which("ninja") == str(scripts / "ninja")
    assert os.environ["PATH"].split(os.pathsep).count(str(scripts)) == 1  # moved first, not added twice
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    assert prepare_op_builds() == tmp_path / "ext"  # a folder the user chose is kept
