"""Kimi k1.5 eq. 3 (OPMD) and the other registered losses against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from rl.losses import LOSSES, get_loss, group_baseline, opmd_loss


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
    assert metrics["kl"] == 0.0
    loss.backward()
    # d loss / d token log-prob = 1/2 * -(r - rbar):
    # -0.25 on sample 1's tokens, +0.25 on sample 2's, 0 on padding
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-0.25, -0.25], [0.25, 0.0]]))


def test_kl_term_by_hand():
    logprobs, mask = batch()
    old = torch.tensor([[-1.5, -2.0], [-1.5, 0.0]])  # S_old = [-3.5, -1.5]
    rewards, groups = torch.tensor([1.0, 1.0]), torch.tensor([0, 0])  # equal rewards: no policy term
    loss, metrics = opmd_loss(logprobs, old, mask, rewards, groups, tau=2.0)
    # S - S_old = [0.5, 1.0]; tau/2 * (0.25 + 1.0) / 2 samples = 1.0 * 1.25 / 2 = 0.625
    assert math.isclose(loss.item(), 0.625, rel_tol=1e-6)
    assert math.isclose(metrics["kl"], (0.25 + 1.0) / 2, rel_tol=1e-6)


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


def test_two_data_parallel_halves_average_to_global_loss():
    torch.manual_seed(1)
    logprobs = (-torch.rand(8, 4)).requires_grad_()
    old = -torch.rand(8, 4)
    mask = torch.ones(8, 4)
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 1, 0, 0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    full, _ = opmd_loss(logprobs, old, mask, rewards, groups, tau=1.0)
    g_full = torch.autograd.grad(full, logprobs)[0]
    # Rank r takes half the samples; the group baseline is computed over the whole batch first, and
    # each rank normalizes by B / world_size so the rank average is the global mean.
    baseline = group_baseline(rewards, groups)
    halves = []
    for idx in (torch.tensor([0, 2, 4, 6]), torch.tensor([1, 3, 5, 7])):
        part, _ = opmd_loss(
            logprobs[idx],
            old[idx],
            mask[idx],
            rewards[idx],
            groups[idx],
            tau=1.0,
            baseline=baseline[idx],
            normalizer=8 / 2,
        )
        halves.append(part)
    avg = (halves[0] + halves[1]) / 2
    assert math.isclose(avg.item(), full.item(), rel_tol=1e-6)
    g_avg = torch.autograd.grad(avg, logprobs)[0]
    torch.testing.assert_close(g_avg, g_full)


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
    loss, _ = get_loss("reinforce")(logprobs, logprobs.detach(), mask, rewards, groups)
    # REINFORCE: 1/2 * [ -0.5 * -3 + 0.5 * -0.5 ] = 0.625 (the OPMD policy term alone)
    assert math.isclose(loss.item(), 0.625, rel_tol=1e-6)
    loss, m = get_loss("grpo")(logprobs, logprobs.detach(), mask, rewards, groups)
    # ratio 1; advantages (r - 0.5) / (0.5 + 1e-6) = [~1, ~-1]; per-sample -mean(adv) -> [-1, 1] -> mean 0
    assert abs(loss.item()) < 1e-5 and m["clip_fraction"] == 0.0


def test_tau_must_be_positive():
    logprobs, mask = batch()
    with pytest.raises(ValueError, match="tau must be > 0"):
        opmd_loss(logprobs, logprobs, mask, torch.zeros(2), torch.zeros(2), tau=0.0)
