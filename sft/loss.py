"""The SFT loss: token-level negative log-likelihood of assistant tokens (a pure tensor function)."""

from __future__ import annotations

import torch


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
    rows = logits[keep].float()  # (N, V)
    nll = torch.logsumexp(rows, dim=-1) - rows.gather(-1, targets[keep][:, None]).squeeze(-1)  # (N,)
    nll_sum = nll.sum()
    return nll_sum / normalizer, {"nll_sum": float(nll_sum.detach()), "tokens": float(keep.sum())}
