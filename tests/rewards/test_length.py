"""Kimi k1.5 length reward against hand-worked numbers."""

from __future__ import annotations

import pytest

from rewards import LengthPenalty, length_reward, total_rewards


def test_mixed_group():
    # min 10, max 30: lambda = 0.5 - (len - 10) / 20 = [0.5, 0.0, -0.5]
    # correct keeps lambda, wrong gets min(0, lambda): [0.5, min(0, 0.0) = 0.0, -0.5]
    assert length_reward([10, 20, 30], [True, False, True]) == [0.5, 0.0, -0.5]


def test_wrong_answers_never_gain():
    # lambda = [0.5, -0.5]; both wrong -> [min(0, 0.5), min(0, -0.5)] = [0.0, -0.5]
    assert length_reward([100, 200], [False, False]) == [0.0, -0.5]


def test_quarter_steps():
    # min 0, max 40: lambda = 0.5 - len / 40 = [0.5, 0.25, 0.0, -0.25, -0.5]
    got = length_reward([0, 10, 20, 30, 40], [True, True, False, False, True])
    assert got == [0.5, 0.25, 0.0, -0.25, -0.5]


def test_equal_lengths_give_zero():
    assert length_reward([7, 7, 7], [True, False, True]) == [0.0, 0.0, 0.0]
    assert length_reward([], []) == []


def test_mismatched_inputs_are_an_error():
    with pytest.raises(ValueError, match="3 lengths but 2"):
        length_reward([1, 2, 3], [True, False])


def test_total_rewards_weight_and_warmup():
    penalty = LengthPenalty(weight=0.5, warmup_iterations=2)
    correct, lengths, groups = [True, False, True, True], [10, 30, 5, 5], ["a", "a", "b", "b"]
    # before warm-up ends: correctness only
    assert total_rewards(correct, lengths, groups, iteration=1, penalty=penalty) == [1.0, 0.0, 1.0, 1.0]
    # group a: lambda = [0.5, -0.5] -> [0.5, min(0, -0.5)]; group b: equal lengths -> 0
    # reward = correct + 0.5 * length: [1 + 0.25, 0 - 0.25, 1, 1]
    assert total_rewards(correct, lengths, groups, iteration=2, penalty=penalty) == [1.25, -0.25, 1.0, 1.0]


def test_penalty_validation():
    with pytest.raises(ValueError, match="weight"):
        LengthPenalty(weight=-1)
