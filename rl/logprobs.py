"""Teacher-forced log-probs of given tokens under the learner model (pure tensor math + one forward)."""

from __future__ import annotations

import torch


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets) from logits, in fp32.

    logits: (B, T, V); targets: (B, T) -> (B, T). ``logits[:, t]`` must already predict ``targets[:, t]``.
    """
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def response_logprobs(
    model,
    prompt_ids: list[int],
    response_ids: list[int],
    pixel_values: torch.Tensor | None = None,
    image_grid_hws: torch.Tensor | None = None,
) -> torch.Tensor:
    """(len(response_ids),) log-probs of a response given its prompt.

    ``prompt_ids`` carry the expanded image placeholders, as vLLM and the processor produce them.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(response_ids)], device=device)
    if pixel_values is not None:
        pixel_values, image_grid_hws = pixel_values.to(device), image_grid_hws.to(device)
    logits = model(input_ids=ids, pixel_values=pixel_values, image_grid_hws=image_grid_hws).logits
    start = len(prompt_ids)
    return gather_logprobs(logits[:, start - 1 : -1], ids[:, start:])[0]
