"""Teacher-forced log-probs of given tokens under the learner model (pure tensor math + one forward)."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from learner.experience import Collated


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(targets) and the log-normalizer of each row, in fp32: the one log-softmax gather of kvrl
    (RL log-probs, entropies and the SFT loss all go through it).

    logits: (..., V) with ``logits[..., i]`` predicting ``targets[...]``; targets: (...) -> two (...).
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse, lse


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets): logits (B, T, V), targets (B, T) -> (B, T), fp32."""
    return token_logprobs(logits, targets)[0]


def head_logprobs(
    hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(targets) and the token entropies, computing logits ``chunk`` positions at a time.

    hidden: (B, T, H) states that predict targets: (B, T) -> two (B, T) tensors, fp32; the entropies carry
    no gradient. With gradients on, each chunk's logits are recomputed in backward (non-reentrant
    activation checkpointing, so the head's weight still gets one gradient), so at most one chunk's
    (chunk, V) logits are alive: on a 32K-token response that is the difference between the vocabulary
    times 32K floats and times ``chunk``. ``chunk <= 0``: all positions at once.
    """
    B, T, H = hidden.shape
    flat, flat_targets = hidden.reshape(B * T, H), targets.reshape(B * T)
    size = chunk if chunk > 0 else max(B * T, 1)
    parts = []
    for s in range(0, B * T, size):
        args = (flat[s : s + size], flat_targets[s : s + size], head)
        parts.append(
            checkpoint(_head_chunk, *args, use_reentrant=False)
            if hidden.requires_grad
            else _head_chunk(*args)
        )
    if not parts:
        empty = hidden.new_zeros((B, T), dtype=torch.float32)
        return empty, empty
    logprobs = torch.cat([lp for lp, _ in parts]).reshape(B, T)
    entropy = torch.cat([e for _, e in parts]).reshape(B, T)
    return logprobs, entropy


def _head_chunk(hidden, targets, head):
    logits = head(hidden).float()
    logprobs, lse = token_logprobs(logits, targets)
    with torch.no_grad():
        entropy = lse - (logits.softmax(-1) * logits).sum(-1)
    return logprobs, entropy


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


def batch_logprobs(
    model, head: torch.nn.Module, batch: Collated, logits_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) log-probs of a collated batch's response tokens (0 off the mask) and (B, T) token
    entropies, padded or packed alike; ``model`` is the Kimi-VL model (or its DeepSpeed engine)."""
    hidden = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        pixel_values=batch.pixel_values,
        image_grid_hws=batch.image_grid_hws,
        image_token_mask=batch.prompt_mask,
        use_cache=False,
        hidden_states_only=True,
    ).last_hidden_state[:, :-1]
    if batch.position_ids is not None:  # packed: one row, response_index points into it
        rows, targets = hidden[0][batch.response_index], batch.input_ids[0, 1:][batch.response_index]
    else:
        rows = hidden.gather(1, batch.response_index[..., None].expand(-1, -1, hidden.shape[-1]))
        targets = batch.input_ids[:, 1:].gather(1, batch.response_index)
    logprobs, token_entropy = head_logprobs(rows, targets, head, logits_chunk)
    return logprobs * batch.response_mask, token_entropy
