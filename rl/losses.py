"""Policy losses as pure tensor functions, chosen by name from a registry.

Every loss takes per-token log-probs of the sampled responses and returns ``(loss, metrics)``.
Shapes: B samples, T response tokens (right-padded, ``response_mask`` 1 on real tokens).

The OPMD loss is Kimi k1.5 eq. 3 (online policy mirror descent with a KL term towards the policy
that produced the rollouts, sec. 2.3.2): for each prompt x with k samples y_j and rewards r_j,

    L = 1/k sum_j [ -(r_j - rbar) * log pi(y_j|x) + tau/2 * (log pi(y_j|x) - log pi_old(y_j|x))^2 ]

averaged over prompts, where rbar is the group's mean reward (or, optionally, the exact
tau * log mean exp(r / tau) of the derivation). log pi(y|x) is the sum of the response's token
log-probs; the token-normalized variant divides both sums by the response length.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    def wrap(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        return fn

    return wrap


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def group_baseline(rewards: torch.Tensor, group_ids: torch.Tensor, tau: float | None = None) -> torch.Tensor:
    """(B,) baseline of each sample's group: mean reward, or tau * log mean exp(r / tau) if tau is given."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if len(inverse) else 0
    counts = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device).index_add_(
        0, inverse, torch.ones_like(rewards)
    )
    if tau is None:
        sums = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device).index_add_(
            0, inverse, rewards
        )
        return (sums / counts)[inverse]
    # tau * log( (1/k) sum_j exp(r_j / tau) ), stabilized by the group max
    scaled = rewards / tau
    gmax = torch.full((n_groups,), -torch.inf, dtype=rewards.dtype, device=rewards.device).scatter_reduce(
        0, inverse, scaled, reduce="amax"
    )
    sums = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device).index_add_(
        0, inverse, torch.exp(scaled - gmax[inverse])
    )
    return (tau * (gmax + torch.log(sums / counts)))[inverse]


def _sequence_sums(logprobs: torch.Tensor, mask: torch.Tensor, token_normalized: bool) -> torch.Tensor:
    sums = (logprobs * mask).sum(-1)  # (B,)
    return sums / mask.sum(-1).clamp(min=1) if token_normalized else sums


@register_loss("opmd")
def opmd_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    tau: float,
    baseline: torch.Tensor | None = None,
    exact_baseline: bool = False,
    token_normalized: bool = False,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Kimi k1.5 eq. 3 (see the module docstring).

    logprobs, old_logprobs, response_mask: (B, T); rewards, group_ids: (B,).
    baseline: (B,) precomputed rbar per sample (e.g. over a whole batch split into micro-batches);
        default: computed here from ``rewards`` and ``group_ids``.
    exact_baseline: rbar = tau * log mean exp(r / tau) instead of the mean.
    token_normalized: S_j = mean instead of sum of token log-probs (not in the paper; tames long responses).
    normalizer: divide the summed per-sample terms by this instead of B (micro-batching: pass the
        number of samples in the full batch, so micro-batch losses add up to the batch loss).

    With equal-size groups, (1/G) sum_groups (1/k) sum_j = (1/B) sum_j, which is what is computed.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    mask = response_mask.to(logprobs.dtype)
    s = _sequence_sums(logprobs, mask, token_normalized)
    s_old = _sequence_sums(old_logprobs.detach(), mask, token_normalized)
    if baseline is None:
        baseline = group_baseline(rewards.to(s.dtype), group_ids, tau if exact_baseline else None)
    advantage = rewards.to(s.dtype) - baseline
    kl_term = (s - s_old) ** 2
    per_sample = -advantage.detach() * s + 0.5 * tau * kl_term
    loss = per_sample.sum() / (normalizer if normalizer is not None else len(per_sample))
    metrics = {
        "kl": float(kl_term.detach().mean()),
        "advantage_abs_mean": float(advantage.abs().mean()),
    }
    return loss, metrics


@register_loss("reinforce")
def reinforce_loss(
    logprobs, old_logprobs, response_mask, rewards, group_ids, *, baseline=None, normalizer=None, **_
) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE with the group-mean baseline: -(r - rbar) * log pi(y|x), averaged over samples."""
    mask = response_mask.to(logprobs.dtype)
    s = (logprobs * mask).sum(-1)
    if baseline is None:
        baseline = group_baseline(rewards.to(s.dtype), group_ids)
    advantage = (rewards.to(s.dtype) - baseline).detach()
    loss = (-advantage * s).sum() / (normalizer if normalizer is not None else len(s))
    return loss, {"advantage_abs_mean": float(advantage.abs().mean())}


@register_loss("grpo")
def clipped_loss(
    logprobs,
    old_logprobs,
    response_mask,
    rewards,
    group_ids,
    *,
    clip_eps: float = 0.2,
    baseline=None,
    normalizer=None,
    **_,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO/GRPO-style clipped surrogate with group-normalized advantages (r - mean) / (std + 1e-6),
    token-level ratios, averaged over each response's tokens then over samples."""
    mask = response_mask.to(logprobs.dtype)
    r = rewards.to(logprobs.dtype)
    mean = baseline if baseline is not None else group_baseline(r, group_ids)
    var = group_baseline((r - mean) ** 2, group_ids)
    advantage = ((r - mean) / (var.sqrt() + 1e-6)).detach()[:, None]  # (B, 1)
    ratio = torch.exp(logprobs - old_logprobs.detach())
    surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantage)
    per_sample = -(surrogate * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    loss = per_sample.sum() / (normalizer if normalizer is not None else len(per_sample))
    clipped = ((ratio - 1).abs() > clip_eps).to(mask.dtype)
    return loss, {"clip_fraction": float((clipped * mask).sum() / mask.sum().clamp(min=1))}
