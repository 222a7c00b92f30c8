"""Prioritized sampler statistics, curriculum stages, exact resume, difficulty validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curriculum import (
    CurriculumConfig,
    CurriculumSampler,
    DifficultyError,
    PrioritizedSampler,
    Stage,
    check_difficulty,
    difficulty_from_outcomes,
    easy_to_hack,
)
from runkit.config import ConfigError, load_config


def test_draw_frequencies_follow_one_minus_success_rate():
    sampler = PrioritizedSampler(3, seed=1234, floor=0.0)
    sampler.update([0, 1, 1, 2], [0, 1, 0, 1])  # s = [0, 0.5, 1]
    np.testing.assert_allclose(sampler.success_rates, [0.0, 0.5, 1.0])
    draws = np.bincount([sampler.sample(1)[0] for _ in range(10_000)], minlength=3) / 10_000
    # weights max(1 - s, 0) = [1, 0.5, 0] -> probabilities [2/3, 1/3, 0]
    np.testing.assert_allclose(draws, [2 / 3, 1 / 3, 0.0], atol=0.02)


def test_floor_keeps_solved_problems_in_play():
    sampler = PrioritizedSampler(2, seed=0, floor=0.25)
    sampler.update([0, 1], [0, 1])  # weights [1, max(0, 0.25)] -> [0.8, 0.2]
    draws = np.bincount([sampler.sample(1)[0] for _ in range(10_000)], minlength=2) / 10_000
    np.testing.assert_allclose(draws, [0.8, 0.2], atol=0.02)


def test_running_mean_ema_and_prior():
    s = PrioritizedSampler(3, prior=0.3)
    assert s.success_rates.tolist() == [0.3, 0.3, 0.3]  # unseen -> prior
    s.update([0, 0], [1, 0])  # first outcomes: mean 0.5
    s.update([0, 0, 0, 0], [1, 1, 1, 1])  # running mean over 6 outcomes: (0.5*2 + 1*4) / 6 = 5/6
    assert math.isclose(s.success_rates[0], 5 / 6)
    e = PrioritizedSampler(1, ema=0.5)
    e.update([0], [1])  # first: 1
    e.update([0], [0])  # 0.5 * 1 + 0.5 * 0 = 0.5
    e.update([0], [0])  # 0.25
    assert math.isclose(e.success_rates[0], 0.25)


def test_samples_are_distinct_and_batches_always_full():
    s = PrioritizedSampler(10, seed=3)
    s.update(list(range(8)), [1] * 8)  # only 2 problems left with positive weight
    batch = s.sample(5)
    assert len(set(batch)) == 5 and {8, 9} <= set(batch)
    with pytest.raises(ValueError, match="cannot draw 11"):
        s.sample(11)


def test_bad_updates_are_errors():
    s = PrioritizedSampler(2)
    with pytest.raises(ValueError, match="problem id 5 out of range"):
        s.update([5], [1])
    with pytest.raises(ValueError, match="not in"):
        s.update([0], [2])


def test_resume_draws_exactly_what_the_original_would_have():
    a = PrioritizedSampler(50, seed=7, floor=0.1)
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = a.sample(8)
        a.update(batch, rng.integers(0, 2, size=8))
    b = PrioritizedSampler(50, seed=999)  # different seed: the state must carry the generator
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        x, y = a.sample(8), b.sample(8)
        assert x == y
        outcomes = rng.integers(0, 2, size=8)
        a.update(x, outcomes)
        b.update(y, outcomes)
    np.testing.assert_array_equal(a.success_rates, b.success_rates)


def test_curriculum_resume_is_exact():
    cfg = CurriculumConfig(schedule="smooth", start_difficulty=0.2, ramp_iterations=4)
    diff = np.linspace(0, 1, 40)
    a = CurriculumSampler(diff, cfg, seed=5)
    a.update(a.sample(6, 0), [1, 0, 1, 0, 1, 0])
    b = CurriculumSampler(diff, cfg, seed=0)
    b.load_state_dict(a.state_dict())
    assert [a.sample(6, it) for it in range(1, 5)] == [b.sample(6, it) for it in range(1, 5)]


def test_staged_curriculum_switches_at_configured_iterations():
    cfg = CurriculumConfig(
        schedule="staged",
        stages=[Stage(0.3, until_iteration=2), Stage(0.6, until_iteration=5), Stage(1.0)],
    )
    diff = np.array([0.1, 0.2, 0.5, 0.55, 0.9, 1.0])
    sampler = CurriculumSampler(diff, cfg, seed=0)
    pools = {it: sampler.pool(it, 1).tolist() for it in range(7)}
    assert pools[0] == pools[1] == [0, 1]  # stage 0: difficulty <= 0.3
    assert pools[2] == pools[4] == [0, 1, 2, 3]  # stage 1 from iteration 2: <= 0.6
    assert pools[5] == pools[6] == [0, 1, 2, 3, 4, 5]  # stage 2 from iteration 5
    assert sampler.metrics([0, 1], 4)["curriculum_stage"] == 1
    for it in range(7):
        assert set(sampler.sample(2, it)) <= set(pools[it])


def test_uniform_then_hard_switches():
    cfg = CurriculumConfig(schedule="uniform_then_hard", switch_iteration=3, hard_threshold=0.5)
    sampler = CurriculumSampler([0.1, 0.4, 0.6, 0.9], cfg)
    assert sampler.pool(2, 1).tolist() == [0, 1, 2, 3]
    assert sampler.pool(3, 1).tolist() == [2, 3]
    assert sampler.pool(3, 3).tolist() == [0, 2, 3]  # topped up with the easiest other problem


def test_smooth_schedule_widens_linearly():
    cfg = CurriculumConfig(schedule="smooth", start_difficulty=0.2, ramp_iterations=4)
    sampler = CurriculumSampler([0.1, 0.3, 0.5, 0.7, 0.95], cfg)
    # admitted max difficulty: 0.2 + 0.8 * min(1, it / 4) = 0.2, 0.4, 0.6, 0.8, 1.0
    assert [len(sampler.pool(it, 1)) for it in range(5)] == [1, 2, 3, 4, 5]


def test_metrics():
    sampler = CurriculumSampler([0.05, 0.15, 0.95], CurriculumConfig())
    sampler.update([0, 1, 1], [1, 1, 0])  # s = [1, 0.5, prior]
    m = sampler.metrics([0, 1, 2], 0)
    assert m["success_rate_mean"] == 0.75 and m["solved_problems"] == 1 and m["pool_size"] == 3
    assert m["difficulty_hist/0.0-0.2"] == 2 and m["difficulty_hist/0.8-1.0"] == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "difficulty is NaN"),
        (1.5, "outside \\[0, 1\\]"),
        (-0.1, "outside \\[0, 1\\]"),
        ("hard", "got str 'hard'"),
        (None, "got NoneType"),
        (True, "got bool"),
    ],
)
def test_bad_difficulty_values_name_file_and_row(value, message):
    with pytest.raises(DifficultyError, match=f"data/train.jsonl, row 7: .*{message}"):
        check_difficulty(value, "data/train.jsonl", 7)


def test_difficulty_estimates():
    assert difficulty_from_outcomes([1, 0, 0, 0]) == 0.75
    assert easy_to_hack([0, 0, 1]) and not easy_to_hack([0, 0, 0])


def test_curriculum_config_from_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "schedule: staged\n"
        "stages:\n  - {max_difficulty: 0.3, until_iteration: 2}\n  - {max_difficulty: 1.0}\n"
    )
    cfg = load_config(CurriculumConfig, f)
    assert cfg.stages[1].max_difficulty == 1.0 and cfg.stages[0].until_iteration == 2
    with pytest.raises(ConfigError, match="schedule: 'hardest' is not one of"):
        load_config(CurriculumConfig, f, ["schedule=hardest"])
    with pytest.raises(ConfigError, match="increasing until_iteration"):
        load_config(CurriculumConfig, f, ["stages=[{max_difficulty: 0.5}, {max_difficulty: 1.0}]"])
