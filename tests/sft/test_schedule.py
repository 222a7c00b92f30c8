"""LR schedule phases against numbers worked out by hand."""

from __future__ import annotations

import pytest

from sft.schedule import LRPhase, lr_at, phase_steps


def test_two_epoch_decay_rewarm_decay():
    # 10 steps per epoch; phase 1: 1 epoch, warm-up 20% (2 steps) to 2e-5, linear decay to 2e-6 over
    # the remaining 8 steps; phase 2: re-warm over 2 steps to 1e-5, then linear to 1e-6.
    phases = [
        LRPhase(epochs=1, warmup=0.2, peak_lr=2e-5, final_lr=2e-6, decay="linear"),
        LRPhase(epochs=1, warmup=0.2, peak_lr=1e-5, final_lr=1e-6, decay="linear"),
    ]
    lrs = [lr_at(s, phases, 10) for s in range(21)]
    assert lrs[0] == pytest.approx(1e-5)  # warm-up step 1 of 2: 2e-5 * 1/2
    assert lrs[1] == pytest.approx(2e-5)  # warm-up done
    assert lrs[2] == pytest.approx(2e-5)  # first decay step: peak
    # decay step j of 8 (j = 0..7): 2e-5 + (2e-6 - 2e-5) * j / 7; step 5 is j = 3 -> 2e-5 - 1.8e-5 * 3/7
    assert lrs[5] == pytest.approx(2e-5 - 1.8e-5 * 3 / 7)
    assert lrs[9] == pytest.approx(2e-6)  # last step of the phase: final_lr
    assert lrs[10] == pytest.approx(5e-6)  # re-warm: 1e-5 * 1/2
    assert lrs[11] == pytest.approx(1e-5)
    assert lrs[19] == pytest.approx(1e-6)
    assert lrs[20] == pytest.approx(1e-6)  # past the end: the last final_lr
    assert phase_steps(phases, 10) == [10, 10]


def test_cosine_midpoint_and_constant():
    # cosine over 5 decay steps (no warm-up): frac 0.5 at step 2 -> (peak + final) / 2
    (p,) = [LRPhase(epochs=1, warmup=0.0, peak_lr=1.0, final_lr=0.0)]
    assert [round(lr_at(s, [p], 5), 6) for s in range(5)] == [1.0, 0.853553, 0.5, 0.146447, 0.0]
    c = LRPhase(epochs=0.5, warmup=0.0, peak_lr=3e-4, decay="constant")
    assert phase_steps([c], 7) == [4]  # round(3.5) = 4
    assert lr_at(3, [c], 7) == 3e-4


def test_bad_phase_values():
    with pytest.raises(ValueError, match="warmup"):
        LRPhase(warmup=1.0)
    with pytest.raises(ValueError, match="epochs"):
        LRPhase(epochs=0)
