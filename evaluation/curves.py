"""Test-time scaling math: budgets, cutting a response at a thinking budget, and the points of a curve.

Pure functions of token ids and counts (no vLLM, no Ray), used by ``kvrl eval tts`` and by the RL
driver's periodic curves (``evaluation.tts``). A curve is accuracy against the thinking budget, as in the
Kimi-VL report's Fig. 13 (max thinking tokens 1K ... 16K).

Budget semantics (both modes): a response *closes its thinking within budget b* when ``◁/think▷``
is among its first ``b`` response tokens; the thinking tokens used are the tokens before the close
(at most ``b``). A response that does not close within ``b`` is *truncated* at ``b``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

Z_95 = 1.959963984540054  # standard normal quantile for a two-sided 95% interval

CSV_COLUMNS = (
    "checkpoint",
    "budget",
    "mode",
    "accuracy",
    "ci_low",
    "ci_high",
    "mean_thinking_tokens",
    "truncation_rate",
    "pass_at_k",
    "k",
    "samples",
    "problems",
)

_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kK]?)\s*$")


def parse_budget(text: str) -> int:
    """``"512"`` -> 512, ``"1k"`` -> 1024, ``"1.5k"`` -> 1536 (k = 1024 tokens)."""
    m = _BUDGET.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a token count (use e.g. 512 or 1k)")
    value = float(m.group(1)) * (1024 if m.group(2) else 1)
    if value != int(value) or value < 1:
        raise ValueError(f"{text!r} is not a whole number of tokens >= 1")
    return int(value)


def parse_budgets(text: str) -> list[int]:
    """A comma-separated list of budgets, sorted, duplicates removed: ``"1k,16,32"`` -> [16, 32, 1024]."""
    items = [t for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError("no budgets given (use e.g. 16,32,64 or 1k,2k,4k)")
    return sorted({parse_budget(t) for t in items})


def format_budget(budget: int) -> str:
    """Tick label: 1024 -> "1k", 1536 -> "1.5k", 96 -> "96"."""
    if budget >= 1024 and (budget * 2) % 1024 == 0:
        k = budget / 1024
        return f"{k:g}k"
    return str(budget)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); (0, 1) when there are no trials.

    centre = (p + z²/2n) / (1 + z²/n),  half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²).
    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at p = 0 or 1.
    """
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return 0.0, 1.0
    n, p, z2 = trials, successes / trials, z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At p = 0 (p = 1) the lower (upper) end is exactly 0 (1); rounding would leave 1e-17 off.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, "Evaluating LLMs trained on code"):
    1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@dataclass(frozen=True)
class BudgetCut:
    """One response seen under a thinking budget: the response tokens that count, and how they ended."""

    token_ids: tuple[int, ...]  # response tokens kept: thinking, then ◁/think▷ + answer (if closed)
    thinking_tokens: int  # tokens before ◁/think▷, at most the budget
    truncated: bool  # no ◁/think▷ among the first ``budget`` tokens: no answer, scores 0


def cut_at_budget(
    token_ids: Sequence[int], budget: int, close_id: int, answer_tokens: int, ended: bool = False
) -> BudgetCut:
    """What a response generated with room for ``max(budgets) + answer_tokens`` tokens would have been
    under a cap of ``budget`` thinking tokens (the thinking section opened by the prompt).

    Closed at position p < budget: keep ``token_ids[: p + 1 + answer_tokens]`` — the close plus at most
    ``answer_tokens`` answer tokens, the same bound ``force`` mode gives the answer. Otherwise the
    response is truncated: its first ``budget`` tokens are kept and it has no answer. ``ended`` says the
    stream stopped at an end-of-turn token (last in ``token_ids``), which then is not a thinking token.
    This depends only on the first ``budget + answer_tokens`` tokens, so one generation at the largest
    budget serves every smaller one (``tests/evaluation/test_tts.py`` checks it against per-budget
    generation).
    """
    if budget < 1 or answer_tokens < 0:
        raise ValueError(f"need budget >= 1 and answer_tokens >= 0, got {budget}, {answer_tokens}")
    ids = tuple(token_ids)
    head = ids[:budget]
    if close_id in head:
        p = head.index(close_id)
        return BudgetCut(ids[: p + 1 + answer_tokens], p, False)
    thinking = len(head) - (1 if ended and len(ids) <= budget and ids else 0)
    return BudgetCut(head, thinking, True)


@dataclass(frozen=True)
class Outcome:
    """One scored response at one budget."""

    problem: int  # index of the problem in the eval set
    thinking_tokens: int
    truncated: bool
    correct: bool


@dataclass
class CurvePoint:
    """One point of a test-time scaling curve (one checkpoint, one budget); a row of ``tts.csv``."""

    checkpoint: str
    budget: int
    mode: str
    accuracy: float
    ci_low: float
    ci_high: float
    mean_thinking_tokens: float
    truncation_rate: float
    pass_at_k: float
    k: int
    samples: int  # responses per problem
    problems: int

    def row(self) -> dict:
        return {c: getattr(self, c) for c in CSV_COLUMNS}


def curve_point(
    checkpoint: str, budget: int, mode: str, outcomes: Sequence[Outcome], k: int = 1
) -> CurvePoint:
    """Accuracy over all responses with its 95% Wilson interval, mean thinking tokens, truncation rate
    and unbiased pass@k averaged over problems (every problem needs the same number of responses >= k)."""
    if not outcomes:
        raise ValueError(f"budget {budget}: no responses to score")
    per_problem: dict[int, list[bool]] = {}
    for o in outcomes:
        per_problem.setdefault(o.problem, []).append(o.correct)
    sizes = {len(v) for v in per_problem.values()}
    if len(sizes) != 1 or min(sizes) < k:
        raise ValueError(f"budget {budget}: need >= k={k} responses per problem, got sizes {sorted(sizes)}")
    correct = sum(o.correct for o in outcomes)
    low, high = wilson_interval(correct, len(outcomes))
    pass_k = sum(pass_at_k(len(v), sum(v), k) for v in per_problem.values()) / len(per_problem)
    return CurvePoint(
        checkpoint=checkpoint,
        budget=budget,
        mode=mode,
        accuracy=correct / len(outcomes),
        ci_low=low,
        ci_high=high,
        mean_thinking_tokens=sum(o.thinking_tokens for o in outcomes) / len(outcomes),
        truncation_rate=sum(o.truncated for o in outcomes) / len(outcomes),
        pass_at_k=pass_k,
        k=k,
        samples=sizes.pop(),
        problems=len(per_problem),
    )
