"""Off-policy corrections (rl/offpolicy.py) and where they enter OPMD's loss, on numbers worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from learner.experience import Experience, collate
from rl.losses import opmd_loss
from rl.offpolicy import correct, mismatch_metrics


def batch() -> tuple[list[Experience], list[list[float]]]:
    """Two responses whose reference (old_logprobs, the learner's by now) and rollout log-probs differ:
    log rho = ref - rollout = [ln 3, 0, -ln 4] and [ln 1.5, ln 0.8]; sample 0's token 1 was forced."""
    ref = [[math.log(0.3), -6.0, math.log(0.1)], [math.log(0.6), math.log(0.4)]]
    rollout = [[math.log(0.1), 0.0, math.log(0.4)], [math.log(0.4), math.log(0.5)]]
    samples = [
        Experience([1], [2, 3, 4], reward=1.0, group_id=0, old_logprobs=ref[0], forced=[1]),
        Experience([1], [5, 6], reward=0.0, group_id=0, old_logprobs=ref[1]),
    ]
    return samples, rollout


def test_tis_truncates_each_tokens_ratio_at_the_cap():
    samples, rollout = batch()
    metrics = correct(samples, rollout, "tis", cap=2.0)
    # rho: 3 -> 2 (truncated), forced -> 1 (not sampled: left as it is), 1/4, 1.5, 0.8
    assert samples[0].pg_weights == pytest.approx([2.0, 1.0, 0.25])
    assert samples[1].pg_weights == pytest.approx([1.5, 0.8])
    # over the 4 sampled tokens: weights (2 + 0.25 + 1.5 + 0.8) / 4 = 1.1375, 1 of 4 truncated
    assert metrics == pytest.approx({"offpolicy_weight_mean": 1.1375, "offpolicy_truncated_share": 0.25})
    assert all(s.dropped == [] for s in samples)


def test_icepop_drops_the_tokens_outside_the_band_from_the_loss():
    samples, rollout = batch()
    metrics = correct(samples, rollout, "icepop", band=(0.5, 2.0))
    # rho 3 and 1/4 are outside [0.5, 2]; 1.5 and 0.8 inside; the forced token is already out
    assert samples[0].dropped == [0, 2] and samples[1].dropped == []
    assert metrics == {"offpolicy_dropped_token_share": 0.5}
    assert collate(samples, pad_id=0).response_mask.tolist() == [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]  # padded


def test_mis_drops_a_whole_response_whose_geometric_mean_ratio_leaves_the_band():
    samples, rollout = batch()
    metrics = correct(samples, rollout, "mis", band=(0.8, 1.25))
    # sample 0: exp((ln 3 - ln 4) / 2) = sqrt(0.75) = 0.866, inside [0.8, 1.25]: kept
    # sample 1: exp((ln 1.5 + ln 0.8) / 2) = sqrt(1.2) = 1.095, inside: kept
    assert [s.dropped for s in samples] == [[], []] and metrics["offpolicy_dropped_token_share"] == 0.0
    samples, rollout = batch()
    metrics = correct(samples, rollout, "mis", band=(0.9, 1.25))  # now 0.866 < 0.9: sample 0 goes
    assert [s.dropped for s in samples] == [[0, 2], []]
    assert metrics == {"offpolicy_dropped_token_share": 0.5, "offpolicy_dropped_response_share": 0.5}


def test_a_ratio_far_out_is_truncated_or_dropped_without_overflow():
    # the engine gave the token log-prob -900 (bf16 underflow territory), the learner -1: rho = e^899
    for kind, check in (("tis", lambda e: e.pg_weights == [2.0]), ("icepop", lambda e: e.dropped == [0])):
        e = Experience([1], [2], reward=1.0, group_id=0, old_logprobs=[-1.0])
        correct([e], [[-900.0]], kind)
        assert check(e), kind


def test_the_monitor_reads_every_sampled_token():
    samples, rollout = batch()
    learner = [list(s.old_logprobs) for s in samples]
    m = mismatch_metrics(samples, rollout, learner)
    x = [math.log(3), -math.log(4), math.log(1.5), math.log(0.8)]  # the forced token is left out
    assert m["mismatch_kl"] == pytest.approx(sum(math.expm1(v) - v for v in x) / 4)
    assert m["rollout_learner_logprob_gap_max"] == pytest.approx(math.log(4))
    assert m["mismatch_ratio_outside"] == 0.5  # rho 3 and 1/4


def test_tis_weights_enter_the_policy_gradient_term_only():
    # One response of two tokens, advantage A = +0.5 (group [1, 0]), tau = 1, logprobs l = old = [-1, -2]
    # at theta = theta_old. Per sample: -A * (w1 l1 + w2 l2) + tau/2 (l1 + l2 - S_old)^2.
    # d/dl_t = -A w_t + tau (S - S_old) = -A w_t at S = S_old, divided by B = 2 samples:
    # sample 0 (A = 0.5, w = [2, 0.25]): [-0.5, -0.0625]; sample 1 (A = -0.5, w = 1): [0.25, 0.25].
    logprobs = torch.tensor([[-1.0, -2.0], [-1.0, -2.0]], requires_grad=True)
    old = logprobs.detach().clone()
    mask = torch.ones(2, 2)
    weights = torch.tensor([[2.0, 0.25], [1.0, 1.0]])
    loss, _ = opmd_loss(logprobs, old, mask, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), tau=1.0,
                        pg_weights=weights)  # fmt: skip
    loss.backward()
    assert logprobs.grad.flatten().tolist() == pytest.approx([-0.5, -0.0625, 0.25, 0.25])
    # the tau term is not weighted: one step on, S - S_old = 0.1 on sample 0 adds tau * 0.1 / 2 = 0.05 to
    # both of its tokens' gradients, whatever their weights
    moved = (old + torch.tensor([[0.1, 0.0], [0.0, 0.0]])).requires_grad_(True)
    loss, _ = opmd_loss(moved, old, mask, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), tau=1.0,
                        pg_weights=weights)  # fmt: skip
    loss.backward()
    assert moved.grad[0].tolist() == pytest.approx([-0.5 + 0.05, -0.0625 + 0.05], abs=1e-6)  # float32


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["trainer.off_policy_correction=tis", "trainer.old_logprobs=rollout"], "needs trainer.old_logprobs"),
        (["trainer.correction_cap=0.5"], "correction_cap must be >= 1"),
        (["trainer.correction_band=[1.2, 2.0]"], r"0 < lo < 1 < hi, got 2.0 and \[1.2, 2.0\]"),
        (["trainer.off_policy_correction=ppo"], "off_policy_correction"),
        (["learner.routing_replay=true"], "set by kvrl rl from trainer.routing_replay"),
        (["trainer.routing_replay=true", "trainer.old_logprobs=rollout"], "routing_replay needs"),
    ],
)
def test_bad_correction_settings_are_refused_by_name(tiny_trainer, keys, message):
    with pytest.raises(ValueError, match=message):
        tiny_trainer(*keys)
