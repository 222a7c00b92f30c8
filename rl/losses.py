"""Policy losses as pure tensor functions, chosen by name from a registry.

A registered loss has two halves:

- ``advantages(rewards, group_ids, **options) -> (B,)``: group statistics (baselines, stds), computed
  once on the driver over **whole groups** before the batch is sharded over ranks and cut into
  micro-batches (a micro-batch or a rank shard holds part of a group, and padding samples);
- ``loss(inputs, normalizer, **options) -> (loss, metrics)``: per micro-batch, from per-sample
  advantages only, so any split of the batch adds up to the same loss and gradient.

Shapes: B samples, T response tokens (right-padded, ``response_mask`` 1 on tokens the policy chose).

The OPMD loss is Kimi k1.5 eq. 3 (online policy mirror descent with a KL term towards the policy
that produced the rollouts, sec. 2.3.2): for each prompt x with k samples y_j and rewards r_j,

    L = 1/k sum_j [ -(r_j - rbar) * log pi(y_j|x) + tau/2 * (log pi(y_j|x) - log pi_old(y_j|x))^2 ]

averaged over prompts, where rbar is the group's mean reward (or, optionally, the exact
tau * log mean exp(r / tau) of the derivation). log pi(y|x) is the sum of the response's token
log-probs; the token-normalized variant divides both sums by the response length. The tau term's
gradient is zero at pi = pi_old: it acts only from the second optimizer step on the same samples.

Off-policy correction (``rl/offpolicy.py``, docs/rl.md "Off-policy correction"). Eq. 3 is an expectation
over y ~ pi_old, but the engine sampled y from mu. The exact correction weighs each response's whole
term by pi_old(y) / mu(y), a product over its tokens whose variance grows with length. kvrl corrects
only the policy-gradient term, token by token: -(r_j - rbar) * sum_t w_t log pi(y_jt), w_t the truncated
ratio min(pi_old / mu, C) of token t (TIS; the per-token form drops the ratio of the prefix, as every
token-level correction does). The tau term stays as it is: it is a proximity penalty centred on pi_old,
minimized at pi = pi_old whatever distribution its samples come from, so weighting it would only add
variance. Masks (IcePop per token, MIS per response) drop tokens from both terms alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from learner.loss import LossFn, LossInputs, Mean, combine

__all__ = ["LossInputs", "Mean", "combine", "get_loss", "opmd_loss", "register_loss"]


AdvantageFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class PolicyLoss:
    name: str
    advantages: AdvantageFn
    loss: LossFn

    def bound(self, options: dict[str, Any]) -> LossFn:
        """``loss`` with its options fixed: the callable a learner rank runs on each micro-batch."""
        return functools.partial(self.loss, **options)


LOSSES: dict[str, PolicyLoss] = {}


def register_loss(name: str, advantages: AdvantageFn) -> Callable[[LossFn], LossFn]:
    """Register ``loss(inputs, normalizer, **options)`` under ``name`` with its advantage function."""

    def wrap(fn: LossFn) -> LossFn:
        LOSSES[name] = PolicyLoss(name, advantages, fn)
        return fn

    return wrap


def get_loss(name: str) -> PolicyLoss:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def assign_advantages(samples: Sequence[Any], loss: PolicyLoss, options: dict[str, Any]) -> None:
    """Set ``advantage`` on each sample (an ``learner.experience.Experience``) from the loss's group
    statistics over the groups of ``samples``, which must hold every sample of each of its groups."""
    rewards = torch.tensor([s.reward for s in samples], dtype=torch.float64, device="cpu")  # driver side
    groups = torch.tensor([s.group_id for s in samples], device="cpu")
    for s, a in zip(samples, loss.advantages(rewards, groups, **options).tolist(), strict=True):
        s.advantage = a


def group_baseline(rewards: torch.Tensor, group_ids: torch.Tensor, tau: float | None = None) -> torch.Tensor:
    """(B,) baseline of each sample's group: mean reward, or tau * log mean exp(r / tau) if tau is given."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if len(inverse) else 0
    zeros = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device)
    counts = zeros.index_add(0, inverse, torch.ones_like(rewards))
    if tau is None:
        return (zeros.index_add(0, inverse, rewards) / counts)[inverse]
    # tau * log( (1/k) sum_j exp(r_j / tau) ), stabilized by the group max
    scaled = rewards / tau
    gmax = torch.full_like(zeros, -torch.inf).scatter_reduce(0, inverse, scaled, reduce="amax")
    sums = zeros.index_add(0, inverse, torch.exp(scaled - gmax[inverse]))
    return (tau * (gmax + torch.log(sums / counts)))[inverse]


def _sequence_sums(
    logprobs: torch.Tensor, mask: torch.Tensor, token_normalized: bool, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """(B,) sum (or mean) of the masked token log-probs, each times its weight if ``weights`` (B, T)."""
    sums = (logprobs * mask * (1.0 if weights is None else weights.detach().to(mask.dtype))).sum(-1)
    return sums / mask.sum(-1).clamp(min=1) if token_normalized else sums


def _advantage_abs_mean(advantage: torch.Tensor, mask: torch.Tensor) -> Mean:
    """Mean |advantage| over the samples with a trained token (padding samples have none)."""
    active = (mask.sum(-1) > 0).to(mask.dtype)
    return Mean(float((advantage.abs() * active).sum()), float(active.sum()))


# -- OPMD (Kimi k1.5 eq. 3) ------------------------------------------------------------------------


def opmd_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, tau: float = 1.0, exact_baseline: bool = False, **_
) -> torch.Tensor:
    """(B,) r_j - rbar over whole groups; rbar = tau * log mean exp(r / tau) if ``exact_baseline``."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return rewards - group_baseline(rewards, group_ids, tau if exact_baseline else None)


@register_loss("opmd", opmd_advantages)
def opmd_micro_loss(
    inputs: LossInputs, normalizer: float, *, tau: float, token_normalized: bool = False, **_
) -> tuple[torch.Tensor, dict[str, Mean]]:
    """Kimi k1.5 eq. 3 on one micro-batch: sum_j [-A_j S^w_j + tau/2 (S_j - S_old_j)^2] / normalizer.

    ``normalizer``: the number of samples in the whole batch divided by the number of data-parallel
    ranks (they average gradients), so micro-batch losses add up to the batch mean.
    token_normalized: S_j = mean instead of sum of token log-probs (not in the paper; tames long responses).
    S^w_j weighs each token by ``inputs.pg_weights`` (the off-policy correction; S^w = S without one).
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    mask = inputs.response_mask.to(inputs.logprobs.dtype)
    s = _sequence_sums(inputs.logprobs, mask, token_normalized)
    s_pg = (
        s
        if inputs.pg_weights is None
        else _sequence_sums(inputs.logprobs, mask, token_normalized, inputs.pg_weights)
    )
    s_old = _sequence_sums(inputs.old_logprobs.detach(), mask, token_normalized)
    advantage = inputs.advantages.to(s.dtype).detach()
    per_sample = -advantage * s_pg + 0.5 * tau * (s - s_old) ** 2
    metrics = {"advantage_abs_mean": _advantage_abs_mean(advantage, mask)}
    return per_sample.sum() / normalizer, metrics


def opmd_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    tau: float,
    exact_baseline: bool = False,
    token_normalized: bool = False,
    pg_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Mean]]:
    """Kimi k1.5 eq. 3 on a whole batch (every group complete), averaged over its B samples.

    logprobs, old_logprobs, response_mask: (B, T); rewards, group_ids: (B,). With equal-size groups,
    (1/G) sum_groups (1/k) sum_j = (1/B) sum_j, which is what is computed. pg_weights (B, T): the
    off-policy correction's token weights on the policy-gradient term (module docstring).
    """
    advantages = opmd_advantages(
        rewards.to(logprobs.dtype), group_ids, tau=tau, exact_baseline=exact_baseline
    )
    inputs = LossInputs(logprobs, old_logprobs, response_mask, advantages, pg_weights)
    return opmd_micro_loss(inputs, len(rewards), tau=tau, token_normalized=token_normalized)


# -- REINFORCE with the group-mean baseline ---------------------------------------------------------


def mean_baseline_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, **_) -> torch.Tensor:
    """(B,) r_j minus the mean reward of its group."""
    return rewards - group_baseline(rewards, group_ids)


@register_loss("reinforce", mean_baseline_advantages)
def reinforce_micro_loss(inputs: LossInputs, normalizer: float, **_) -> tuple[torch.Tensor, dict[str, Mean]]:
    """-A_j * log pi(y_j|x) (its tokens weighted by ``pg_weights`` if given), summed over the micro-batch
    and divided by ``normalizer``."""
    mask = inputs.response_mask.to(inputs.logprobs.dtype)
    s = _sequence_sums(inputs.logprobs, mask, False, inputs.pg_weights)
    advantage = inputs.advantages.to(s.dtype).detach()
    metrics = {"advantage_abs_mean": _advantage_abs_mean(advantage, mask)}
    return (-advantage * s).sum() / normalizer, metrics


# -- GRPO / PPO-style clipped surrogate ---------------------------------------------------------------


def normalized_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, **_) -> torch.Tensor:
    """(B,) (r_j - mean) / (std + 1e-6), mean and (population) std over the sample's whole group."""
    mean = group_baseline(rewards, group_ids)
    std = group_baseline((rewards - mean) ** 2, group_ids).sqrt()
    return (rewards - mean) / (std + 1e-6)


@register_loss("grpo", normalized_advantages)
def clipped_micro_loss(
    inputs: LossInputs, normalizer: float, *, clip_eps: float = 0.2, **_
) -> tuple[torch.Tensor, dict[str, Mean]]:
    """PPO/GRPO-style clipped surrogate with token-level ratios, averaged over each response's tokens,
    then summed over samples and divided by ``normalizer``; each token's surrogate times its
    ``pg_weights`` if given (TIS as verl applies it)."""
    mask = inputs.response_mask.to(inputs.logprobs.dtype)
    advantage = inputs.advantages.to(mask.dtype).detach()[:, None]  # (B, 1)
    ratio = torch.exp(inputs.logprobs - inputs.old_logprobs.detach())
    surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantage)
    if inputs.pg_weights is not None:
        surrogate = surrogate * inputs.pg_weights.detach().to(mask.dtype)
    per_sample = -(surrogate * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    clipped = ((ratio.detach() - 1).abs() > clip_eps).to(mask.dtype)
    metrics = {"clip_fraction": Mean(float((clipped * mask).sum()), float(mask.sum()))}
    return per_sample.sum() / normalizer, metrics
