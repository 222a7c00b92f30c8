"""Which SFT examples share a packed row: first-fit decreasing bins of at most ``pack_length`` tokens.

How a packed row is laid out and run without cross-contamination is ``learner/packing.py``.
"""

from __future__ import annotations

from collections.abc import Sequence


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group example indices into bins of at most ``capacity`` tokens (first-fit decreasing).

    Deterministic: ties keep index order. An example longer than ``capacity`` gets a bin of its own.
    """
    if capacity < 1:
        raise ValueError(f"pack capacity must be >= 1, got {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins
