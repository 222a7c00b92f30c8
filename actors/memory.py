"""Host memory (RSS) of actor processes, logged every iteration so a leak shows in ``metrics.jsonl``."""

from __future__ import annotations

import contextlib

import psutil


def rss_mb(children: bool = True) -> float:
    """Resident memory of this process, plus its child processes (verifier workers) if ``children``; MiB."""
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True) if children else ():
        with contextlib.suppress(psutil.Error):  # it may exit between listing and reading
            total += child.memory_info().rss
    return total / 2**20
