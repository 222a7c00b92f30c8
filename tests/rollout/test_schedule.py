"""The rollout queue's policies (synchronous, divided, context-aware), repeat stops and the tail metrics,
on hand-made trajectories: no engine."""

from __future__ import annotations

import random

import pytest

from rollout.schedule import RolloutQueue, ScheduleConfig, rollout_metrics
from rollout.trajectory import RepeatConfig, RepeatWatch, Trajectory, repeated_period
from rollout.worker import RolloutRequest


def group(name: str, n: int, seed: int = 0) -> list[Trajectory]:
    request = RolloutRequest(name, f"prompt {name}", seed=seed)
    return [Trajectory(request, j) for j in range(n)]


def generate(t: Trajectory, tokens: int, done: bool, version: int = 0, at: float | None = None) -> Trajectory:
    """What an engine hands back: ``tokens`` more tokens, finished or not."""
    t.extend(list(range(tokens)), [-1.0] * tokens, version)
    if done:
        t.finish_reason, t.finished_at = "stop", at
    return t


def keys(ts: list[Trajectory]) -> list[str]:
    return [t.key for t in ts]


def test_synchronous_hands_out_whole_groups_in_arrival_order():
    q = RolloutQueue(group("a", 2) + group("b", 2) + group("c", 2), ScheduleConfig(), chunk_size=2, engines=2)
    assert q.max_new is None  # each unit runs to its end
    assert keys(q.take(capacity=64)) == ["a/0", "a/1", "b/0", "b/1"]  # chunk_size=2 groups, every sample
    assert keys(q.take(capacity=64)) == ["c/0", "c/1"]
    assert q.take(capacity=64) == [] and not q.pending()


def test_divided_deals_an_even_share_and_puts_unfinished_work_first():
    cfg = ScheduleConfig(divided=True, chunk_tokens=8)
    q = RolloutQueue(group("a", 3) + group("b", 3), cfg, chunk_size=4, engines=2)
    first = q.take(capacity=2)
    # ceil(6 / 2 engines) = 3, more than its 2 slots (vLLM queues the third), dealt every 2nd
    assert keys(first) == ["a/0", "a/2", "b/1"]
    assert q.max_new == 8  # 6 samples for 2 engines x 2 slots: a queue, so cut at a chunk
    second = q.take(capacity=2)
    assert keys(second) == ["a/1", "b/0", "b/2"] and q.max_new == 8
    # the first engine finishes two, one goes on: it is queued first
    back = [generate(first[0], 8, False), generate(first[1], 3, True), generate(first[2], 5, True)]
    q.put_back(first, back)
    assert q.waiting == ["a/0"]
    # 1 waiting + 3 running fit 2 engines x 2 slots: the rest runs to its end, no chunk barrier
    assert keys(q.take(capacity=2)) == ["a/0"] and q.max_new is None


def test_a_dead_engines_batch_runs_again_unchanged():
    cfg = ScheduleConfig(divided=True, chunk_tokens=4)
    q = RolloutQueue(group("a", 2), cfg, chunk_size=1, engines=1)
    batch = q.take(capacity=8)
    q.put_back(batch, None)
    assert keys(q.take(capacity=8)) == ["a/0", "a/1"] and q.running == 2


def test_context_aware_runs_one_probe_per_group_then_the_longest_group_first():
    cfg = ScheduleConfig(divided=True, chunk_tokens=4, context_aware=True)
    trajectories = group("short", 3) + group("long", 3) + group("mid", 3)
    q = RolloutQueue(trajectories, cfg, chunk_size=1, engines=1)
    everything = q.take(capacity=1)  # one engine: all of it, the probes first, in arrival order
    assert keys(everything)[:3] == ["short/0", "long/0", "mid/0"]
    probes = everything[:3]
    # the probes' first chunk: short finished at 2 tokens, mid at 3, long is still going after 4;
    # the other six come back untouched
    done = [generate(probes[0], 2, True), generate(probes[1], 4, False), generate(probes[2], 3, True)]
    q.put_back(everything, [*done, *everything[3:]])
    # longest estimated group first: long (4 so far, its probe going on first), then mid (3), short (2)
    assert keys(q.take(capacity=1)) == ["long/0", "long/1", "long/2", "mid/1", "mid/2", "short/1", "short/2"]


def test_context_aware_needs_divided():
    with pytest.raises(ValueError, match=r"context_aware needs rollout\.schedule\.divided"):
        ScheduleConfig(context_aware=True)


def test_a_trajectory_out_of_budget_leaves_the_queue_unfinished():
    cfg = ScheduleConfig(divided=True, chunk_tokens=4)
    (t,) = group("a", 1)
    t.budget = 6
    q = RolloutQueue([t], cfg, chunk_size=1, engines=1)
    (sent,) = q.take(capacity=8)
    q.put_back([sent], [generate(sent, 4, False)])  # budget 6 - 4 = 2: still in the queue
    (sent,) = q.take(capacity=8)
    q.put_back([sent], [generate(sent, 2, False)])  # budget spent: paused, not queued
    assert sent.paused and not sent.done and not q.pending()
    assert q.results()[0].response_ids == [0, 1, 2, 3, 0, 1]


def test_rollout_metrics_by_hand():
    ts = group("a", 10)
    # 10 responses of lengths 1..10 finishing at t = 100 + length: 90% (9 of them) are done at t = 109,
    # the last at t = 110, so the tail is 1 s. Nearest-rank p90 of 1..10 is the 9th value: 9.
    for t, length in zip(ts, range(1, 11), strict=True):
        generate(t, length, True, at=100.0 + length)
    m = rollout_metrics(ts, seconds=4.0, slot_seconds=6.0, slots=3)
    assert m["response_len_p50"] == 5.5 and m["response_len_p90"] == 9 and m["response_len_max"] == 10
    assert m["rollout_tail_s"] == pytest.approx(1.0)
    assert m["rollout_busy_fraction"] == pytest.approx(0.5)  # 6 slot-seconds of 4 s x 3 slots


def test_repeated_period_by_hand():
    assert repeated_period([9, 1, 2, 1, 2, 1, 2], max_period=4, min_repeats=3) == 2
    assert repeated_period([9, 1, 2, 1, 2, 1, 2], max_period=4, min_repeats=4) is None  # only 3 copies
    assert repeated_period([5, 5, 5, 5], max_period=1, min_repeats=4) == 1
    assert repeated_period([1, 2, 3, 1, 2, 4], max_period=3, min_repeats=2) is None  # 1 2 3 vs 1 2 4
    assert repeated_period([7, 1, 2, 3, 1, 2, 3], max_period=2, min_repeats=2) is None  # period 3 > max


def test_repeat_watch_fires_exactly_where_repeated_period_first_does():
    """Token by token, the watch agrees with the whole-list check at every prefix, continuations
    included: sequences over 3 symbols repeat often, so both answers get exercised."""
    rng = random.Random(0)
    cfg = RepeatConfig(max_period=4, min_repeats=3)
    fired = 0
    for trial in range(600):
        # 3 symbols repeat often; 40 mostly do not, so a new token often matches nothing in the window
        ids = [rng.randrange(3 if trial % 2 else 40) for _ in range(rng.randrange(1, 40))]
        split = rng.randrange(len(ids) + 1)
        watch = RepeatWatch(cfg, ids[:split])
        for k in range(split, len(ids)):
            expected = repeated_period(ids[: k + 1], cfg.max_period, cfg.min_repeats) is not None
            assert watch.push(ids[k]) == expected, (ids, split, k)
            fired += expected
    assert fired > 100
    # [9, 1, 2, 1, 2, 1, 2]: the third copy of (1, 2) completes at the 7th token
    assert RepeatWatch(cfg).first_repeat([9, 1, 2, 1, 2, 1, 2, 1]) == 7


def test_trajectory_seeds_first_as_vllm_then_by_position():
    a0, a1 = group("a", 2, seed=40)
    assert (a0.seed(), a1.seed()) == (40, 41)  # vLLM's seed + j for sample j of an n-sample request
    generate(a0, 3, False)
    later = a0.seed()
    assert later not in (40, 41)
    b0 = group("a", 1, seed=40)[0]
    generate(b0, 3, False)
    assert b0.seed() == later  # the same trajectory at the same length: the same stream, on any engine


def test_trajectory_state_round_trip_and_stale_tokens():
    (t,) = group("p@2", 1)
    generate(t, 3, False, version=2)
    generate(t, 2, True, version=3, at=5.0)
    assert t.born == [2, 2, 2, 3, 3] and t.stale_tokens(3) == 3 and t.stale_tokens(2) == 0
    back = Trajectory.from_state(t.state_dict(), t.request)
    assert back.state_dict() == t.state_dict()
    with pytest.raises(ValueError, match="given request"):
        Trajectory.from_state(t.state_dict(), RolloutRequest("other", "x"))


def test_tail_metrics_count_only_what_finished_in_this_rollout():
    # 9 samples finished last iteration (t = 10) and wait for the 10th, which finishes now (t = 50).
    # Counted with them, 90% of the group is done at t = 10 and the tail is 40 s; this rollout's is 0 s.
    *old, new = group("a", 10)
    for t in old:
        generate(t, 3, True, at=10.0)
    q = RolloutQueue([*old, new], ScheduleConfig(), chunk_size=1, engines=1)
    (sent,) = q.take(capacity=16)
    q.put_back([sent], [generate(sent, 7, True, at=50.0)])
    assert [t.key for t in q.finished_here()] == ["a/9"]
    assert rollout_metrics(q.finished_here(), 1.0, 1.0, 1)["rollout_tail_s"] == 0.0
    assert rollout_metrics(q.results(), 1.0, 1.0, 1)["rollout_tail_s"] == 40.0  # what was logged before


def test_synchronous_deals_continuing_groups_over_the_engines_units():
    # Two engines, one fresh group per unit, and two groups a partial rollout carries (started
    # earlier, unfinished). Handed out as units of their own they would make a third and fourth
    # round after a and b; dealt over the units, every engine's first call takes one along.
    carried = group("c", 2) + group("d", 2)
    for t in carried:
        generate(t, 5, False)
    q = RolloutQueue(carried + group("a", 2) + group("b", 2), ScheduleConfig(), chunk_size=1, engines=2)
    first, second = q.take(capacity=64), q.take(capacity=64)
    assert keys(first) == ["a/0", "a/1", "c/0", "c/1"]
    assert keys(second) == ["b/0", "b/1", "d/0", "d/1"]
    assert not q.pending()
    q.put_back(second, None)  # that engine died: its unit runs again whole
    assert keys(q.take(capacity=64)) == keys(second)


def test_synchronous_spreads_a_rollout_of_only_continuing_groups_over_the_engines():
    carried = group("c", 1) + group("d", 1) + group("e", 1)
    for t in carried:
        generate(t, 5, False)
    q = RolloutQueue(carried, ScheduleConfig(), chunk_size=8, engines=2)
    assert [keys(q.take(capacity=64)) for _ in range(2)] == [["c/0", "e/0"], ["d/0"]]
