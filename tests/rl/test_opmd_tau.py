"""OPMD's tau term acts once theta has moved on the same samples (Kimi k1.5 eq. 3).

Its gradient, tau (log pi_theta - log pi_theta_i) grad log pi_theta, is zero at theta = theta_i: with one pass
of one optimizer step tau changes nothing; with a second pass over the iteration's samples it pulls the
policy back towards pi_theta_i, so a large tau ends the iteration closer to pi_theta_i than a small one.
"""

from __future__ import annotations

import pytest
import torch

from learner.experience import Experience
from learner.rank import Learner, LearnerConfig
from rl.losses import assign_advantages, get_loss
from rl.trainer import optimizer_steps


def batch() -> list[Experience]:
    """2 groups of 4 responses with mixed rewards (the same batch every call)."""
    g = torch.Generator().manual_seed(0)
    return [
        Experience(
            torch.randint(10, 200, (4,), generator=g).tolist(),
            torch.randint(10, 200, (3 + i % 3,), generator=g).tolist(),
            reward=float(i % 4 == 0 or i == 5),
            group_id=i // 4,
        )
        for i in range(8)
    ]


def drift_after_iteration(tiny_dir, tau: float, passes: int, steps: int) -> float:
    """Mean over the batch of (log pi_theta(y|x) - log pi_theta_i(y|x))^2 after one iteration from the
    tiny model's weights, as the trainer runs it (advantages over whole groups, then the steps)."""
    learner = Learner(str(tiny_dir), LearnerConfig(zero_stage=2, lr=1e-3, micro_batch_size=8))
    samples = batch()
    for s, lp in zip(samples, learner.logprobs(samples), strict=True):
        s.old_logprobs = lp
    options = {"tau": tau}
    assign_advantages(samples, get_loss("opmd"), options)
    for part in optimizer_steps(samples, steps, passes):
        assert float(learner.train_step(part, get_loss("opmd").bound(options), len(part))["skipped"]) == 0.0
    after = learner.logprobs(samples)
    drift = [(sum(a) - sum(s.old_logprobs)) ** 2 for s, a in zip(samples, after, strict=True)]
    return sum(drift) / len(drift)


@pytest.mark.slow
def test_tau_pulls_towards_the_sampling_policy_only_from_the_second_pass(tiny_dir, single_rank):
    one_pass = [drift_after_iteration(tiny_dir, tau, passes=1, steps=1) for tau in (0.01, 100.0)]
    assert one_pass[0] > 0  # the step moved the policy
    assert one_pass[0] == pytest.approx(one_pass[1], rel=1e-9), one_pass  # tau had nothing to act on
    two_passes = [drift_after_iteration(tiny_dir, tau, passes=2, steps=1) for tau in (0.01, 100.0)]
    assert two_passes[1] < 0.5 * two_passes[0], two_passes
