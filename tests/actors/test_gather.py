"""``actors.learner.gather``: a rank killed mid-collective is reported as the death it is, not as the
broken collective its peer sees first (which would stop a run that ``trainer.max_restarts`` would have
restarted)."""

from __future__ import annotations

import os
import time

import pytest


@pytest.mark.slow
def test_a_peers_collective_error_is_reported_as_the_death_behind_it(ray_cluster):
    ray = ray_cluster
    from actors.learner import gather
    from actors.placement import ACTOR_FAILURES

    @ray.remote(num_cpus=0, max_restarts=0)
    class Rank:
        def die_in(self, seconds: float) -> None:
            time.sleep(seconds)
            os._exit(1)

        def fail_in(self, seconds: float) -> None:
            time.sleep(seconds)
            raise RuntimeError("Connection reset by peer")  # as gloo reports a vanished peer

    dying, survivor, other = Rank.remote(), Rank.remote(), Rank.remote()
    try:
        # the survivor's error comes first (0.5 s), the death after it (1.5 s): a killed rank's pattern
        with pytest.raises(ACTOR_FAILURES):
            gather([survivor.fail_in.remote(0.5), dying.die_in.remote(1.5)])
        # with no death behind it, the error is the error
        with pytest.raises(ray.exceptions.RayTaskError, match="Connection reset by peer"):
            gather([other.fail_in.remote(0.1), other.fail_in.remote(0.2)])
    finally:
        for actor in (dying, survivor, other):  # nothing left in the shared cluster
            ray.kill(actor)
