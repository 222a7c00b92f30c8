"""The gap between the policy that sampled a batch and the one that learns it: measured on every token,
and corrected in the loss when asked.

Three policies can differ for one token (DESIGN.md): mu, the one that sampled it (the engine's: bf16
and its own MoE routing, one version older when pipelined, older still for a partial rollout's earlier
segments); pi_ref, the reference the loss is centred on (``trainer.stale_reference``); and pi_theta, the
one being trained, which starts the iteration equal to the learner's pi_ref. The driver gets mu's
log-probs from the rollout and the learner's from one forward pass before the first optimizer step.

**The monitor** (``mismatch_metrics``), over every sampled token (stale and partial-rollout ones
included; a forced token has no rollout value), with rho = pi_learner / mu per token:

- ``mismatch_kl``: KL(mu || pi_learner) per token, estimated on tokens drawn from mu with
  k3 = rho - 1 - log rho (Schulman's k3: unbiased, since E_mu[rho] = 1, and never negative);
  ``mismatch_kl_fresh`` the same over the tokens this iteration's policy sampled (the numeric gap alone,
  without staleness);
- ``rollout_learner_logprob_gap_mean`` / ``_max``: |log mu - log pi_learner|;
- ``mismatch_ratio_outside``: the share of tokens with rho outside [0.5, 2];
- ``mismatch_stale_token_share``: the share of those tokens an older policy sampled.

**The corrections** (``correct``), from rho = pi_ref / mu per token, ``trainer.off_policy_correction``:

- ``tis``: truncated importance sampling, token weights w_t = min(rho_t, C) on the policy-gradient term;
- ``icepop``: IcePop's masks, tokens with rho_t outside [lo, hi] dropped from every term of the loss;
- ``mis``: sequence masking, a response whose geometric-mean rho (exp of its mean log rho) lies outside
  [lo, hi] dropped whole (the product over a 16K-token response would leave nothing inside any band).

Where each enters Kimi k1.5's eq. 3 and why (it is not PPO's token surrogate) is in docs/rl.md's
"Off-policy correction" section and ``rl/losses.py``. Pure tensor code: no Ray, no learner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from learner.experience import Experience

Correction = Literal["none", "tis", "icepop", "mis"]
MONITOR_BAND = (0.5, 2.0)  # rho outside it counts in mismatch_ratio_outside


def _sampled(e: Experience) -> list[int]:
    """Response positions the rollout sampled (a forced token has no rollout log-prob)."""
    forced = set(e.forced)
    return [t for t in range(len(e.response_ids)) if t not in forced]


def mismatch_metrics(
    batch: Sequence[Experience], rollout: Sequence[Sequence[float]], learner: Sequence[Sequence[float]]
) -> dict[str, float]:
    """The monitor: ``rollout`` and ``learner`` are each sample's per-token log-probs under mu and under
    the learner's policy (the one about to train). Module docstring for each metric."""
    mu, lp, stale = [], [], []
    for e, r, q in zip(batch, rollout, learner, strict=True):
        for t in _sampled(e):
            mu.append(r[t])
            lp.append(q[t])
            stale.append(t < e.stale)
    if not mu:
        return {}
    log_rho = torch.tensor(lp, dtype=torch.float64) - torch.tensor(mu, dtype=torch.float64)
    k3 = torch.expm1(log_rho) - log_rho
    old = torch.tensor(stale)
    lo, hi = MONITOR_BAND
    rho = log_rho.exp()
    gap = log_rho.abs()
    return {
        "mismatch_kl": float(k3.mean()),
        "mismatch_kl_fresh": float(k3[~old].mean()) if bool((~old).any()) else 0.0,
        "rollout_learner_logprob_gap_mean": float(gap.mean()),
        "rollout_learner_logprob_gap_max": float(gap.max()),
        "mismatch_ratio_outside": float(((rho < lo) | (rho > hi)).double().mean()),
        "mismatch_stale_token_share": float(old.double().mean()),
    }


def correct(
    batch: Sequence[Experience],
    rollout: Sequence[Sequence[float]],
    kind: Correction,
    cap: float = 2.0,
    band: tuple[float, float] = (0.5, 2.0),
) -> dict[str, float]:
    """Apply the off-policy correction ``kind`` in place: set each sample's ``pg_weights`` (tis) or add
    to its ``dropped`` positions (icepop, mis), from rho = exp(old_logprobs - rollout) per sampled token,
    ``old_logprobs`` being the loss's reference by now. Returns what it did, as shares of the sampled
    tokens (and responses)."""
    if kind == "none":
        return {}
    # in log space: a ratio far out (a token the engine found very unlikely) must not overflow exp
    log_cap, log_lo, log_hi = math.log(cap), math.log(band[0]), math.log(band[1])
    tokens = weighted = dropped = responses = 0
    weight_sum = 0.0
    for e, mu in zip(batch, rollout, strict=True):
        sampled = _sampled(e)
        log_rho = {t: e.old_logprobs[t] - mu[t] for t in sampled}
        tokens += len(sampled)
        if kind == "tis":
            weights = [1.0] * len(e.response_ids)  # a forced token is out of the loss anyway
            for t, x in log_rho.items():
                weights[t] = math.exp(min(x, log_cap))
                weighted += x > log_cap
                weight_sum += weights[t]
            e.pg_weights = weights
        elif kind == "icepop":
            out = [t for t, x in log_rho.items() if not log_lo <= x <= log_hi]
            e.dropped = sorted(set(e.dropped) | set(out))
            dropped += len(out)
        else:  # mis
            mean = sum(log_rho.values()) / len(log_rho) if log_rho else 0.0
            if not log_lo <= mean <= log_hi:
                e.dropped = sorted(set(e.dropped) | set(sampled))
                dropped += len(sampled)
                responses += 1
    share = 1.0 / max(tokens, 1)
    if kind == "tis":
        return {"offpolicy_weight_mean": weight_sum * share, "offpolicy_truncated_share": weighted * share}
    metrics = {"offpolicy_dropped_token_share": dropped * share}
    if kind == "mis":
        metrics["offpolicy_dropped_response_share"] = responses / max(len(batch), 1)
    return metrics
