"""A NaN/inf loss skips the optimizer step (weights untouched) and is counted; the trainer stops after 5."""

from __future__ import annotations

import pytest
import torch

from learner.experience import Experience
from learner.rank import Learner, LearnerConfig
from rl.losses import LOSSES, assign_advantages, get_loss, register_loss


@pytest.fixture(scope="module")
def learner(tiny_dir, single_rank):
    return Learner(str(tiny_dir), LearnerConfig(zero_stage=2, lr=1e-2, micro_batch_size=1))


@pytest.fixture
def nan_loss():
    @register_loss("test_nan", get_loss("reinforce").advantages)
    def loss(inputs, normalizer, **options):
        return inputs.logprobs.sum() * float("nan"), {}

    yield "test_nan"
    LOSSES.pop("test_nan")


@pytest.mark.fault
def test_nonfinite_loss_skips_the_step(learner, nan_loss):
    samples = [Experience([5, 6], [7 + i, 8, 9 + 2 * i], reward=float(i), group_id=0) for i in range(2)]
    for s, lp in zip(samples, learner.logprobs(samples), strict=True):
        s.old_logprobs = lp
    assign_advantages(samples, get_loss("opmd"), {"tau": 1.0})
    before = learner.full_state()
    out = learner.train_step(samples, get_loss(nan_loss).bound({}), len(samples))
    assert {k: float(v) for k, v in out.items()} == {"skipped": 1.0}
    after = learner.full_state()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the next good step still trains
    out = learner.train_step(samples, get_loss("opmd").bound({"tau": 1.0}), len(samples))
    assert float(out["skipped"]) == 0.0
    assert not torch.equal(
        before["language_model.lm_head.weight"], learner.full_state()["language_model.lm_head.weight"]
    )


@pytest.mark.fault
def test_trainer_stops_after_five_nonfinite_steps_in_a_row():
    from rl.trainer import RLConfig, Trainer, TrainingStopped

    class StubGroup:  # only the learner group is stubbed: this tests the trainer's counting
        def logprobs(self, batch):
            return [e.old_logprobs for e in batch]

        def reset_optimizer(self):
            pass

        def train_step(self, *args, **kwargs):
            return {"skipped": 1.0}

    trainer = Trainer.__new__(Trainer)
    trainer.cfg = RLConfig()
    trainer.learners = StubGroup()
    trainer.nonfinite_in_a_row = 0
    trainer.step = 0
    batch = [Experience([1], [2], reward=float(i % 2), group_id=0, old_logprobs=[-1.0]) for i in range(2)]
    for _ in range(4):
        assert trainer.learn(list(batch))["nonfinite_steps"] == 1
    with pytest.raises(TrainingStopped, match="5 optimizer steps in a row had a NaN/inf loss"):
        trainer.learn(list(batch))
