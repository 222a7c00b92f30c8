"""The SFT loss: token-level negative log-likelihood of assistant tokens (a pure tensor function)."""

from __future__ import annotations

import torch

from learner.logprobs import token_logprobs


def sft_loss(
    logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor, normalizer: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """sum over masked positions of -log p(target) / ``normalizer``.

    logits: (B, L, V), position t predicting ``targets[:, t]``; targets, loss_mask: (B, L).
    ``normalizer``: the number of target tokens in the whole optimizer step (all micro-batches and
    ranks) divided by the number of data-parallel ranks, which DeepSpeed averages: the accumulated
    gradient is then that of the step's token mean however the step is split (one rank: the count).
    Only masked rows of the logits are taken through the log-softmax (memory: N x V, not B x L x V).
    """
    keep = loss_mask > 0
    logprobs, _ = token_logprobs(logits[keep], targets[keep])  # (N,) from (N, V) rows
    nll_sum = -logprobs.sum()
    return nll_sum / normalizer, {"nll_sum": float(nll_sum.detach()), "tokens": float(keep.sum())}
