"""Partial rollouts' replay buffer: budgets, whole groups only, and continuation across iterations and a
checkpoint round trip with no sample lost or duplicated. The engine is a stand-in that samples a fixed
length per trajectory; ``tests/rollout/test_segments.py`` runs the real one."""

from __future__ import annotations

import json

import pytest

from rl.partial import PartialBuffer, PartialConfig, group_key, parse_group
from rollout.trajectory import Trajectory
from rollout.worker import RolloutRequest

# the full length each trajectory would have; group p1 holds the long one
LENGTHS = {"p0": [3, 5], "p1": [4, 23], "p2": [6, 2]}


def fresh(problem: str, iteration: int) -> list[Trajectory]:
    request = RolloutRequest(group_key(problem, iteration), f"q {problem}", seed=iteration)
    return [Trajectory(request, j) for j in range(2)]


def engine(trajectories: list[Trajectory], version: int) -> list[Trajectory]:
    """Sample each trajectory to its full length or its budget, whichever comes first."""
    for t in trajectories:
        target = LENGTHS[parse_group(t.group)[0]][t.sample]
        room = target - len(t.response_ids)
        n = room if t.budget is None else min(room, t.budget)
        t.extend([version] * n, [-0.5] * n, version)
        if len(t.response_ids) == target:
            t.finish_reason = "stop"
    return trajectories


def test_budgets_and_the_span_bound():
    buf = PartialBuffer(PartialConfig(enabled=True, segment_tokens=4, max_iterations=3))
    t0, t1 = fresh("p0", 5)
    (b0,) = buf.schedule([t0], 5)
    assert b0.budget == 4
    assert buf.schedule([t1], 7)[0].budget is None  # 7 - 5 + 1 = 3 iterations: the last one is uncapped
    off = PartialBuffer(PartialConfig(enabled=False))
    assert off.schedule(fresh("p0", 0), 0)[0].budget is None


def test_a_group_is_learned_only_when_every_sample_is_done():
    buf = PartialBuffer(PartialConfig(enabled=True, segment_tokens=4))
    out = engine(buf.schedule(fresh("p0", 0) + fresh("p1", 0), 0), version=0)
    complete = buf.collect(out)
    # p0: 3 done, 5 cut at 4 -> waits with its finished sibling; p1: 4 done, 23 cut -> waits too
    assert complete == [] and buf.carried() == 2 and len(buf.waiting) == 4
    complete = buf.collect(engine(buf.schedule([], 1), version=1))
    assert [[t.key for t in g] for g in complete] == [["p0@0/0", "p0@0/1"]]
    assert buf.carried() == 1  # p1's long one


def test_continuation_across_iterations_and_a_resume_loses_and_duplicates_nothing():
    cfg = PartialConfig(enabled=True, segment_tokens=4, max_iterations=5)
    buf = PartialBuffer(cfg)
    learned: list[Trajectory] = []
    for it in range(4):
        if it == 2:  # a checkpoint and a resume between iterations 1 and 2
            state = json.loads(json.dumps(buf.state_dict()))
            buf = PartialBuffer(cfg)

            def request(group: str) -> RolloutRequest:
                problem, started = parse_group(group)
                return RolloutRequest(group, f"q {problem}", seed=started)

            buf.load_state_dict(state, request)
        new = fresh(["p0", "p1", "p2"][it], it) if it < 3 else []
        for group in buf.collect(engine(buf.schedule(new, it), version=it)):
            learned += group
    keys = [t.key for t in learned]
    assert len(keys) == len(set(keys))  # nothing twice
    assert sorted(keys) == ["p0@0/0", "p0@0/1", "p2@2/0", "p2@2/1"]
    # p1@1/1 (23 tokens) has had 4 + 4 + 4 by iteration 3 and waits; its sibling is done and waits with it
    assert buf.carried() == 1 and {t.key for t in buf.waiting} == {"p1@1/0", "p1@1/1"}
    long = next(t for t in buf.waiting if t.sample == 1)
    assert long.born == [1] * 4 + [2] * 4 + [3] * 4  # each segment marked with the policy that sampled it
    assert long.stale_tokens(3) == 8
    # iteration 5 is its 5th: no cap, it finishes
    (g,) = buf.collect(engine(buf.schedule([], 5), version=5))
    assert [len(t.response_ids) for t in g] == [4, 23] and g[1].born[-11:] == [5] * 11


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match=r"rollout\.partial\.segment_tokens"):
        PartialConfig(segment_tokens=0)
    with pytest.raises(ValueError, match=r"rollout\.partial\.old_segments"):
        PartialConfig(old_segments="drop")


class ExportOnly:
    """Stands in for the learner group at a checkpoint: the tiny model's files as the HF export."""

    def __init__(self, model_dir):
        self.model_dir = model_dir

    def export_hf(self, folder: str) -> None:
        import shutil

        shutil.copytree(self.model_dir, folder, dirs_exist_ok=True)

    def save_state(self, folder: str) -> None:
        pass


def test_a_resumed_trainer_continues_the_carried_trajectories(tiny_trainer, tiny_dir, tmp_path):
    keys = ["rollout.partial.enabled=true", "trainer.iterations=4"]
    trainer = tiny_trainer(*keys)
    trainer.learners = ExportOnly(tiny_dir)
    problem = trainer.problems[1]
    carried = [Trajectory(trainer._request(problem, 0), j) for j in range(2)]
    carried[0].extend([11, 12], [-0.1, -0.2], 0)
    carried[0].finish_reason = "stop"
    carried[1].extend([13, 14, 15], [-0.3, -0.4, -0.5], 0)
    carried[1].prompt_ids = carried[0].prompt_ids = [1, 2]
    # routing replay's record travels with a carried trajectory: 5 positions, 1 MoE layer, top-2
    import numpy as np

    carried[1].routes = np.array([[[0, 1]], [[2, 3]], [[1, 3]], [[0, 2]], [[255, 255]]], dtype=np.uint8)
    trainer.buffer.waiting = carried
    trainer.checkpoint(0)

    resumed = tiny_trainer(*keys, f"trainer.resume={tmp_path / 'run'}")
    assert resumed.start_at == 1
    back = resumed.buffer.waiting
    assert [t.state_dict() for t in back] == [t.state_dict() for t in carried]
    assert back[0].routes is None and (back[1].routes == carried[1].routes).all()
    # the request is rebuilt from the problem and the iteration that started the group: same prompt, seed
    assert back[1].request == carried[1].request
    assert back[1].seed() == carried[1].seed()
