"""The routing record's format (kimivl/routes.py): keep-first merging and its checkpoint form."""

from __future__ import annotations

import numpy as np

from kimivl.routes import NOT_ROUTED, merge_routes, routes_from_state, routes_state
from rollout.trajectory import Trajectory
from rollout.worker import RolloutRequest

N = NOT_ROUTED


def routes(rows: list[list[int]]) -> np.ndarray:
    """One MoE layer, top-1: a row per position."""
    return np.array(rows, dtype=np.uint8).reshape(len(rows), 1, 1)


def test_a_continuation_keeps_the_routing_its_earlier_tokens_were_sampled_with():
    # segment 1 (policy i) routed positions 0-2; its last token (3) was never an input. Segment 2 (policy
    # i+1) recomputed 0-3 with other experts at 1, and routed the new positions 4-5.
    first = routes([[1], [2], [3], [N]])
    later = routes([[1], [0], [3], [5], [6], [N]])
    merged = merge_routes(first, later)
    assert merged[:, 0, 0].tolist() == [1, 2, 3, 5, 6, N]
    assert merge_routes(None, later) is later and merge_routes(first, None) is first


def test_routes_survive_a_checkpoint_with_their_trajectory():
    t = Trajectory(RolloutRequest("g", "prompt"), 0, [1, 2], [3], [-0.5], [0])
    t.routes = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    back = Trajectory.from_state(t.state_dict(), RolloutRequest("g", "prompt"))
    assert back.routes.dtype == np.uint8 and (back.routes == t.routes).all()
    assert routes_from_state(routes_state(None)) is None
    assert Trajectory.from_state(Trajectory(RolloutRequest("g", "p"), 1).state_dict(),
                                 RolloutRequest("g", "p")).routes is None  # fmt: skip
