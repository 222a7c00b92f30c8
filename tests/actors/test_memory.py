"""Peak resident memory of a process, reset and read (what kvrl bench sync measures a sync by)."""

from __future__ import annotations

import numpy as np

from actors.memory import peak_rss_mb, reset_peak_rss


def test_the_peak_follows_an_allocation_and_resets():
    big = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
    del big
    assert peak_rss_mb() >= 200  # the high-water mark keeps it after the free
    now = reset_peak_rss()
    assert peak_rss_mb() < now + 100  # reset: back near the current RSS
    chunk = np.ones(150 * 2**20 // 8)
    assert peak_rss_mb() >= now + 140
    del chunk
