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


def reset_peak_rss() -> float:
    """Reset this process's peak resident memory (Linux ``clear_refs`` 5); its RSS now, MiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory since the last :func:`reset_peak_rss` (``VmHWM``), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM line")
