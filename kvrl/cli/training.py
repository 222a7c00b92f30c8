"""What ``kvrl rl`` and ``kvrl sft`` share: a driver run through the lifecycle, told as it goes."""

from __future__ import annotations

import sys


def run_training(command: str, train, cfg) -> tuple[int, object | None]:
    """``train(cfg)`` (``runkit.lifecycle.run`` underneath); returns the exit code and the driver.

    The first line printed is where the run writes and on which cluster: the first thing in the job log
    of ``ray job submit``. A stopped run (SIGTERM, a lost actor past its restarts, an unwritable
    checkpoint) prints why and where it can continue from, and exits 1.
    """
    from runkit.lifecycle import RunStopped  # lazy, as in every runner

    def started(driver) -> None:
        print(f"kvrl {command}: run dir {driver.run_dir.resolve()}; {driver.cluster}", flush=True)

    try:
        return 0, train(cfg, on_start=started)
    except RunStopped as e:
        print(f"kvrl {command}: stopped: {e}", file=sys.stderr)
        return 1, None
