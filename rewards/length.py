"""The length reward of Kimi k1.5 (sec. 2.3.3) and the total reward it adds to correctness."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass


def length_reward(lengths: Sequence[int], correct: Sequence[bool]) -> list[float]:
    """Length reward over the k samples of one prompt (Kimi k1.5, sec. 2.3.3).

    lambda_i = 0.5 - (len_i - min_len) / (max_len - min_len); a correct sample gets lambda_i, a wrong
    one min(0, lambda_i). When all lengths are equal every sample gets 0.
    """
    if len(lengths) != len(correct):
        raise ValueError(f"{len(lengths)} lengths but {len(correct)} correctness values")
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    if hi == lo:
        return [0.0] * len(lengths)
    out = []
    for n, ok in zip(lengths, correct, strict=True):
        lam = 0.5 - (n - lo) / (hi - lo)
        out.append(lam if ok else min(0.0, lam))
    return out


@dataclass
class LengthPenalty:
    """How much length reward is added to the 0/1 correctness reward, and from when."""

    weight: float = 0.0
    warmup_iterations: int = 0  # k1.5 turns the length reward on only after a warm-up

    def __post_init__(self):
        if self.weight < 0:
            raise ValueError(f"length weight must be >= 0, got {self.weight}")
        if self.warmup_iterations < 0:
            raise ValueError(f"length warmup_iterations must be >= 0, got {self.warmup_iterations}")


def total_rewards(
    correct: Sequence[bool],
    lengths: Sequence[int],
    group_ids: Sequence[Hashable],
    iteration: int,
    penalty: LengthPenalty,
    scores: Sequence[float | None] | None = None,
) -> list[float]:
    """correctness (0/1, or a graded verifier's score where ``scores`` has one) + weight * length
    reward per group, the length part only after warm-up."""
    rewards = [float(c) for c in correct]
    if scores is not None:
        rewards = [r if s is None else float(s) for r, s in zip(rewards, scores, strict=True)]
    if penalty.weight == 0 or iteration < penalty.warmup_iterations:
        return rewards
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, g in enumerate(group_ids):
        groups[g].append(i)
    for members in groups.values():
        bonus = length_reward([lengths[i] for i in members], [correct[i] for i in members])
        for i, b in zip(members, bonus, strict=True):
            rewards[i] += penalty.weight * b
    return rewards
