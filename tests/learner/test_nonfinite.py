"""A NaN/inf loss on a learner rank skips the optimizer step (weights untouched) and is counted."""

from __future__ import annotations

import pytest
import torch

from learner.experience import Experience
from learner.rank import Learner, LearnerConfig
from rl.losses import assign_advantages, get_loss


@pytest.fixture(scope="module")
def learner(tiny_dir, single_rank):
    return Learner(str(tiny_dir), LearnerConfig(zero_stage=2, lr=1e-2, micro_batch_size=1))


def nan_loss(inputs, normalizer):
    return inputs.logprobs.sum() * float("nan"), {}


@pytest.mark.fault
def test_nonfinite_loss_skips_the_step(learner):
    samples = [Experience([5, 6], [7 + i, 8, 9 + 2 * i], reward=float(i), group_id=0) for i in range(2)]
    for s, lp in zip(samples, learner.logprobs(samples), strict=True):
        s.old_logprobs = lp
    assign_advantages(samples, get_loss("opmd"), {"tau": 1.0})
    before = learner.full_state()
    out = learner.train_step(samples, nan_loss, len(samples))
    assert {k: float(v) for k, v in out.items()} == {"skipped": 1.0}
    after = learner.full_state()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the next good step still trains
    out = learner.train_step(samples, get_loss("opmd").bound({"tau": 1.0}), len(samples))
    assert float(out["skipped"]) == 0.0
    assert not torch.equal(
        before["language_model.lm_head.weight"], learner.full_state()["language_model.lm_head.weight"]
    )
