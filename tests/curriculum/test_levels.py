"""Accuracy per difficulty level (``curriculum.accuracy_by_level``), which the RL plot draws."""

from __future__ import annotations

import pytest

from curriculum import accuracy_by_level


def test_accuracy_by_level_by_hand():
    pairs = [(0.1, True), (0.2, False), (0.3, True), (0.74, True), (0.75, False), (1.0, True), (None, True)]
    # [0, .25): 1 of 2; [.25, .5): 1 of 1; [.5, .75): 1 of 1 (0.74); [.75, 1]: 1 of 2 (0.75 and 1.0);
    # the row without a difficulty is left out
    assert accuracy_by_level(pairs) == {
        "accuracy/difficulty_0.00-0.25": 0.5,
        "accuracy/difficulty_0.25-0.50": 1.0,
        "accuracy/difficulty_0.50-0.75": 1.0,
        "accuracy/difficulty_0.75-1.00": 0.5,
    }
    assert accuracy_by_level([(0.9, False)], levels=2) == {"accuracy/difficulty_0.50-1.00": 0.0}
    assert accuracy_by_level([(None, True)]) == {}
    with pytest.raises(ValueError):
        accuracy_by_level([(0.5, True)], levels=0)
