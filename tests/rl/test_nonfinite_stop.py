"""The trainer counts optimizer steps skipped for a NaN/inf loss and stops after 5 in a row (the learner
rank's skip itself: tests/learner/test_nonfinite.py)."""

from __future__ import annotations

import pytest

from learner.experience import Experience


@pytest.mark.fault
def test_trainer_stops_after_five_nonfinite_steps_in_a_row(tiny_trainer):
    from runkit.lifecycle import RunStopped

    class StubGroup:  # only the learner group is stubbed: this tests the trainer's counting
        def logprobs(self, batch, replay=None):
            return [e.old_logprobs for e in batch]

        def reset_optimizer(self):
            pass

        def train_step(self, *args, **kwargs):
            return {"skipped": 1.0}

    trainer = tiny_trainer("trainer.reset_optimizer=true")
    trainer.learners = StubGroup()
    batch = [Experience([1], [2], reward=float(i % 2), group_id=0, old_logprobs=[-1.0]) for i in range(2)]
    for _ in range(4):
        assert trainer.learn(list(batch))["nonfinite_steps"] == 1
    with pytest.raises(RunStopped, match="5 optimizer steps in a row had a NaN/inf loss"):
        trainer.learn(list(batch))
