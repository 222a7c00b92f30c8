"""What a loss callable receives and returns on a learner rank.

The learner runs any ``loss_fn(inputs: LossInputs, normalizer: float) -> (loss, metrics)`` it is handed
(``rl/losses.py`` holds the RL ones, ``sft/loss.py`` the SFT one); metrics are :class:`Mean` s, so
micro-batches, ranks and steps add up to exact means.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Mean:
    """A metric kept as (sum, count), so micro-batches, ranks and steps combine into the exact mean."""

    total: float
    count: float

    def __add__(self, other: Mean) -> Mean:
        return Mean(self.total + other.total, self.count + other.count)

    def __float__(self) -> float:
        return self.total / self.count if self.count else 0.0


def combine(parts: list[dict[str, Mean]]) -> dict[str, Mean]:
    """Sum of metric dicts, key by key (keys missing from a part count as empty)."""
    out: dict[str, Mean] = {}
    for part in parts:
        for name, value in part.items():
            out[name] = out[name] + value if name in out else value
    return out


@dataclass(frozen=True)
class LossInputs:
    """One micro-batch as a loss sees it."""

    logprobs: torch.Tensor  # (B, T) log pi_theta of the sampled tokens (with grad)
    old_logprobs: torch.Tensor  # (B, T) the reference, log pi_theta_i (trainer.stale_reference: docs/rl.md)
    response_mask: torch.Tensor  # (B, T) 1 on tokens the policy chose; 0 on padding and forced tokens
    advantages: torch.Tensor  # (B,) from ``PolicyLoss.advantages`` over whole groups
    # (B, T) per-token weights on the policy-gradient term: the off-policy correction's (rl/offpolicy.py);
    # None: all 1
    pg_weights: torch.Tensor | None = None


LossFn = Callable[..., tuple[torch.Tensor, dict[str, Mean]]]


def policy_metrics(inputs: LossInputs, entropy: torch.Tensor) -> dict[str, Mean]:
    """Loss-independent diagnostics of one micro-batch, over the tokens the policy chose.

    ``kl``: KL(pi_theta || pi_theta_i) per token, estimated on tokens sampled from pi_theta_i with
    rho * log rho - rho + 1, rho = pi_theta / pi_theta_i (unbiased: E_q[rho log rho] = KL(p || q) and
    E_q[rho] = 1; never negative). ``log_ratio_sq``: (log pi_theta(y|x) - log pi_theta_i(y|x))^2 of
    whole responses, the term k1.5 eq. 3 weights by tau/2. ``entropy``: mean token entropy.
    """
    with torch.no_grad():
        mask = inputs.response_mask
        log_ratio = (inputs.logprobs - inputs.old_logprobs) * mask  # (B, T)
        ratio = torch.exp(log_ratio)
        kl = (ratio * log_ratio - ratio + 1) * mask
        active = (mask.sum(-1) > 0).to(mask.dtype)
        tokens = float(mask.sum())
        return {
            "kl": Mean(float(kl.sum()), tokens),
            "log_ratio_sq": Mean(float((log_ratio.sum(-1) ** 2 * active).sum()), float(active.sum())),
            "entropy": Mean(float((entropy * mask).sum()), tokens),
        }
