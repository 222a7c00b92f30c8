"""Kimi k1.5 eq. 3 (OPMD) and the other registered losses against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from learner.loss import policy_metrics
from rl.losses import LOSSES, LossInputs, Mean, combine, get_loss, group_baseline, opmd_loss


def batch(requires_grad=True):
    # sample 1: tokens [-1, -2] -> S1 = -3; sample 2: one token [-0.5] (+ padding) -> S2 = -0.5
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=requires_grad)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    return logprobs, mask


def test_k2_rewards_1_0_tau_1_equal_policies():
    logprobs, mask = batch()
    rewards, groups = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    loss, metrics = opmd_loss(logprobs, logprobs.detach().clone(), mask, rewards, groups, tau=1.0)
    # rbar = 0.5, advantages [0.5, -0.5]; KL term (S - S_old)^2 = 0
    # loss = 1/2 * [ -0.5 * (-3) + 0.5 * (-0.5) ] = 1/2 * (1.5 - 0.25) = 0.625
    assert math.isclose(loss.item(), 0.625, rel_tol=1e-6)
    assert float(metrics["advantage_abs_mean"]) == 0.5
    loss.backward()
    # d loss / d token log-prob = 1/2 * -(r - rbar):
    # -0.25 on sample 1's tokens, +0.25 on sample 2's, 0 on padding
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-0.25, -0.25], [0.25, 0.0]]))


def test_kl_term_by_hand():
    logprobs, mask = batch()
    old = torch.tensor([[-1.5, -2.0], [-1.5, 0.0]])  # S_old = [-3.5, -1.5]
    rewards, groups = torch.tensor([1.0, 1.0]), torch.tensor([0, 0])  # equal rewards: no policy term
    loss, _ = opmd_loss(logprobs, old, mask, rewards, groups, tau=2.0)
    # S - S_old = [0.5, 1.0]; tau/2 * (0.25 + 1.0) / 2 samples = 1.0 * 1.25 / 2 = 0.625
    assert math.isclose(loss.item(), 0.625, rel_tol=1e-6)
    metrics = policy_metrics(LossInputs(logprobs, old, mask, torch.zeros(2)), torch.zeros(2, 2))
    # log_ratio_sq: the same (S - S_old)^2 per sample: (0.25 + 1.0) / 2
    assert math.isclose(float(metrics["log_ratio_sq"]), (0.25 + 1.0) / 2, rel_tol=1e-6)


def test_autograd_gradient_equals_eq3_derivative():
    torch.manual_seed(0)
    B, T = 6, 5
    logprobs = (-torch.rand(B, T) * 3).requires_grad_()
    old = -torch.rand(B, T) * 3
    mask = (torch.rand(B, T) > 0.2).float()
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    tau = 0.7
    loss, _ = opmd_loss(logprobs, old, mask, rewards, groups, tau=tau)
    loss.backward()
    # Independently: L = (1/B) sum_j [ -(r_j - rbar_g) S_j + tau/2 (S_j - S_old_j)^2 ]
    # dL/dS_j = (1/B) [ -(r_j - rbar_g) + tau (S_j - S_old_j) ], and dS_j / d logprob_jt = mask_jt
    S, S_old = (logprobs.detach() * mask).sum(1), (old * mask).sum(1)
    rbar = torch.tensor([2 / 3] * 3 + [1 / 3] * 3)
    dS = (-(rewards - rbar) + tau * (S - S_old)) / B
    torch.testing.assert_close(logprobs.grad, dS[:, None] * mask)


def test_kl_estimate_by_hand():
    # token 1: log rho = -1 - (-2) = 1, rho = e: rho log rho - rho + 1 = e - e + 1 = 1
    # token 2: log rho = -1, rho = 1/e: -1/e - 1/e + 1 = 1 - 2/e = 0.2642411
    # token 3 is padding; token 4 was forced (mask 0): neither counts. Mean over 2 tokens: 0.6321206
    logprobs = torch.tensor([[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]])
    old = torch.tensor([[-2.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    entropy = torch.tensor([[2.0, 4.0, 9.0], [9.0, 9.0, 9.0]])
    m = policy_metrics(LossInputs(logprobs, old, mask, torch.zeros(2)), entropy)
    assert m["kl"] == Mean(pytest.approx(1 + 1 - 2 / math.e), 2.0)
    assert math.isclose(float(m["kl"]), 1 - 1 / math.e, rel_tol=1e-6)
    assert float(m["entropy"]) == 3.0  # token-weighted, masked tokens only
    # sample 1: S - S_old = -3 - (-3) = 0; sample 2 has no trained token and does not count
    assert m["log_ratio_sq"] == Mean(0.0, 1.0)


def test_group_statistics_are_over_whole_groups():
    rewards, groups = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([7, 7, 7, 7])
    # mean 0.25; population variance (0.75^2 + 3 * 0.25^2) / 4 = 0.1875, std 0.4330127
    # (1 - 0.25) / 0.4330127 = 1.7320508 and (0 - 0.25) / 0.4330127 = -0.5773503 (the std's + 1e-6
    # moves them by 2.3e-6 relative, inside rtol)
    grpo = get_loss("grpo").advantages(rewards, groups)
    expected = torch.tensor([1.7320508, -0.5773503, -0.5773503, -0.5773503], dtype=torch.float64)
    torch.testing.assert_close(grpo, expected, rtol=1e-5, atol=0)
    opmd = get_loss("opmd").advantages(rewards, groups, tau=1.0)
    torch.testing.assert_close(opmd, torch.tensor([0.75, -0.25, -0.25, -0.25]).double())


def _split_run(loss, options, logprobs, old, mask, adv, ranks, micro):
    """Loss, gradient and metrics as the learner group computes them: round-robin rank shards padded with
    an inactive copy of sample 0, length-sorted micro-batches, each rank's loss over B / ranks, and the
    ranks' gradients averaged (DeepSpeed's data-parallel mean)."""
    from learner.experience import micro_batches, shard_for_ranks

    B = len(adv)
    lengths = mask.sum(-1)
    total, grad, parts = 0.0, torch.zeros_like(logprobs), []
    for shard in shard_for_ranks(list(range(B)), ranks, -1):
        shard = sorted(shard, key=lambda i: float(lengths[i]) if i >= 0 else 0.0)
        for mb in micro_batches(shard, micro):
            idx = torch.tensor([max(i, 0) for i in mb])
            keep = torch.tensor([float(i >= 0) for i in mb], dtype=mask.dtype)[:, None]
            inputs = LossInputs(logprobs[idx], old[idx], mask[idx] * keep, adv[idx])
            value, metrics = loss.loss(inputs, B / ranks, **options)
            (g,) = torch.autograd.grad(value, logprobs)
            total, grad = total + value.item() / ranks, grad + g / ranks
            parts.append(metrics)
    return total, grad, combine(parts)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_the_same_on_any_split_of_the_batch(name):
    # 3 groups of 3 (9 samples): 2 ranks take 5 and 4 (+ 1 padding sample) and cut them into
    # micro-batches of 2, so every group straddles ranks and micro-batches.
    torch.manual_seed(3)
    B, T = 9, 6
    logprobs = (-torch.rand(B, T, dtype=torch.float64) * 2).requires_grad_()
    old = logprobs.detach() + 0.3 * torch.randn(B, T, dtype=torch.float64)
    mask = (torch.arange(T)[None, :] < torch.randint(1, T + 1, (B, 1))).double()
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0.5, 0, 1], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    options = {"tau": 0.7, "clip_eps": 0.2}
    loss = get_loss(name)
    adv = loss.advantages(rewards, groups, **options)
    whole, metrics = loss.loss(LossInputs(logprobs, old, mask, adv), B, **options)
    (g_whole,) = torch.autograd.grad(whole, logprobs)
    total, g_split, split_metrics = _split_run(loss, options, logprobs, old, mask, adv, ranks=2, micro=2)
    assert math.isclose(total, whole.item(), rel_tol=1e-6, abs_tol=1e-9)
    torch.testing.assert_close(g_split, g_whole, rtol=1e-6, atol=1e-9)
    assert g_whole.abs().sum() > 0
    for key, value in metrics.items():
        assert math.isclose(float(split_metrics[key]), float(value), rel_tol=1e-6), key


def test_exact_baseline_is_tau_log_mean_exp():
    rewards, groups = torch.tensor([1.0, 0.0]), torch.tensor([3, 3])
    # tau * log((e^1 + e^0) / 2) = log(1.8591409) = 0.6201145
    assert math.isclose(
        group_baseline(rewards, groups, tau=1.0)[0].item(), math.log((math.e + 1) / 2), rel_tol=1e-6
    )
    # tau = 0.5: 0.5 * log((e^2 + 1) / 2) = 0.5 * log(4.1945280) = 0.7168...
    assert math.isclose(
        group_baseline(rewards, groups, tau=0.5)[0].item(), 0.5 * math.log((math.e**2 + 1) / 2), rel_tol=1e-6
    )
    logprobs, mask = batch()
    loss, _ = opmd_loss(logprobs, logprobs.detach(), mask, rewards, groups, tau=1.0, exact_baseline=True)
    b = math.log((math.e + 1) / 2)
    # 1/2 * [ -(1 - b)(-3) - (0 - b)(-0.5) ]
    assert math.isclose(loss.item(), 0.5 * (3 * (1 - b) - 0.5 * b), rel_tol=1e-6)


def test_token_normalized_variant():
    logprobs, mask = batch()
    loss, _ = opmd_loss(
        logprobs,
        logprobs.detach(),
        mask,
        torch.tensor([1.0, 0.0]),
        torch.tensor([0, 0]),
        tau=1.0,
        token_normalized=True,
    )
    # S = mean token log-prob: [-1.5, -0.5]; loss = 1/2 * [ -0.5 * -1.5 + 0.5 * -0.5 ] = 1/2 * 0.5 = 0.25
    assert math.isclose(loss.item(), 0.25, rel_tol=1e-6)


def test_registry_and_other_losses():
    assert {"opmd", "reinforce", "grpo"} <= set(LOSSES)
    with pytest.raises(ValueError, match="valid names: grpo, opmd, reinforce"):
        get_loss("ppo2")
    logprobs, mask = batch()
    rewards, groups = torch.tensor([1.0, 0.0]), torch.tensor([0, 0])
    reinforce = get_loss("reinforce")
    inputs = LossInputs(logprobs, logprobs.detach(), mask, reinforce.advantages(rewards, groups))
    loss, _ = reinforce.loss(inputs, 2)
    # REINFORCE: 1/2 * [ -0.5 * -3 + 0.5 * -0.5 ] = 0.625 (the OPMD policy term alone)
    assert math.isclose(loss.item(), 0.625, rel_tol=1e-6)
    grpo = get_loss("grpo")
    inputs = LossInputs(logprobs, logprobs.detach(), mask, grpo.advantages(rewards, groups))
    loss, m = grpo.loss(inputs, 2)
    # ratio 1; advantages (r - 0.5) / (0.5 + 1e-6) = [~1, ~-1]; per-sample -mean(adv) -> [-1, 1] -> mean 0
    assert abs(loss.item()) < 1e-5 and float(m["clip_fraction"]) == 0.0


def test_tau_must_be_positive():
    logprobs, mask = batch()
    with pytest.raises(ValueError, match="tau must be > 0"):
        opmd_loss(logprobs, logprobs, mask, torch.zeros(2), torch.zeros(2), tau=0.0)
