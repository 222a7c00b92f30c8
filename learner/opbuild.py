"""The one JIT-built op a CPU learner needs, DeepSpeed's shared-memory comm op, built once and found again.

torch JIT-builds it with ninja into ``TORCH_EXTENSIONS_DIR`` and rebuilds it (about a minute here) whenever
the folder's ninja log does not match the build command. Both halves of that must be the same for every
process that loads it: ``scripts/setup.sh``, the learner ranks of a Ray cluster started by ``kvrl``, and
the ranks of a cluster started by ``ray start`` (whose workers see another ``PATH``)."""

from __future__ import annotations

import logging
import os
import sysconfig
import time
from pathlib import Path

log = logging.getLogger(__name__)

# DeepSpeed JIT-builds its CPU shared-memory comm op in about a minute here; a build lock older than this
# was left by a build that was killed.
STALE_BUILD_LOCK_S = 600.0


def prepare_op_builds() -> Path:
    """Make every JIT build of an op in this Python environment the same build; returns its folder.

    - The folder: ``TORCH_EXTENSIONS_DIR``, set to ``sys.prefix/torch_extensions`` unless it is set
      already. torch's own default, ~/.cache/torch_extensions, is one folder for every environment on
      the machine, and a build from another environment's headers (a checkout's and CI's fresh clone's)
      makes the next learner build it again.
    - The ninja: this environment's (pip's ``ninja``, a DeepSpeed dependency), put first on ``PATH``;
      torch runs whichever ``ninja`` PATH finds first. Two ninja versions hash a build command
      differently (Debian's 1.11 and pip's 1.13 here), so each takes the other's build for a stale one:
      setup.sh built with one, the workers of a cluster whose PATH named the venv rebuilt with the other,
      and the next process with the first ninja rebuilt it back (seen in the build folder's
      ``.ninja_log``: five builds in two hours, alternating between two command hashes)."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sysconfig.get_path("data")) / "torch_extensions"))
    scripts = sysconfig.get_path("scripts")
    if Path(scripts, "ninja").exists():
        rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != scripts]
        os.environ["PATH"] = os.pathsep.join([scripts, *rest])
    return Path(os.environ["TORCH_EXTENSIONS_DIR"])


def clear_stale_build_lock(
    name: str = "deepspeed_shm_comm", max_age_s: float = STALE_BUILD_LOCK_S
) -> Path | None:
    """Remove the ``lock`` file a killed JIT build of torch extension ``name`` left behind, if it is
    older than ``max_age_s``: torch's loader waits on it, silently and forever, so every later learner
    would hang in setup. Returns the removed lock's path (None: there was none, or it is recent)."""
    from torch.utils.cpp_extension import _get_build_directory

    lock = Path(_get_build_directory(name, verbose=False)) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    if age < max_age_s:
        return None
    log.warning("removing %s, left %.0f s ago by a JIT build of %s that did not finish", lock, age, name)
    lock.unlink(missing_ok=True)
    return lock
