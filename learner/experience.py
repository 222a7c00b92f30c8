"""Learner-side batch types: one :class:`Experience` per sampled response, collated into padded tensors
(:func:`collate`) or packed into one row (:func:`collate_row`, ``learner.micro_batch_tokens``).

Packing: the micro-batch's sequences are laid end to end in one row, each one's position ids
restarting at 0, with no attention mask: transformers then attends within each sequence only (the
method of ``learner/packing.py``, which SFT uses), so every sequence gets the logits it gets alone, and
nothing is padding (on CPU, though, SDPA computes every block of the row's block-diagonal mask, masked
or not: ``kvrl bench packing``, docs/benchmarks.md). The per-response tensors (log-probs, masks,
advantages) keep the padded (B, T) layout, so the losses see the same inputs either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from learner.routing import collate_routes


@dataclass
class Experience:
    """One sampled response with what the learner needs to score and train on it.

    ``prompt_ids`` carry the expanded image placeholders (as vLLM and the processor produce them);
    ``pixel_values`` (P, 3, 14, 14) and ``image_grid_hws`` (N, 2) are the prompt's images.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    reward: float = 0.0
    group_id: int = 0
    old_logprobs: list[float] | None = None  # from the rollout engine, per response token
    pixel_values: torch.Tensor | None = None
    image_grid_hws: torch.Tensor | None = None
    forced: list[int] = field(default_factory=list)  # response positions not sampled (thinking budget)
    stale: int = 0  # leading response tokens an older policy sampled (partial rollouts)
    loss_from: int = 0  # response positions before it carry no loss (masked older segments)
    # off-policy correction (rl/offpolicy.py): per-token weights on the policy-gradient term (None: 1),
    # and positions dropped from every term of the loss
    pg_weights: list[float] | None = None
    dropped: list[int] = field(default_factory=list)
    # the experts the rollout routed each token of prompt + response to (kimivl/routes.py): replayed by
    # the learner's MoE layers with trainer.routing_replay, else compared with its own routing
    routes: np.ndarray | None = None
    advantage: float = 0.0  # from the loss's advantage function over the sample's whole group (driver)


@dataclass
class Collated:
    input_ids: torch.Tensor  # (B, L) prompt + response, right-padded
    attention_mask: torch.Tensor  # (B, L)
    prompt_mask: torch.Tensor  # (B, L) 1 on prompt positions (where image placeholders may be)
    response_index: torch.Tensor  # (B, T) position in the shifted log-prob row of response token t
    response_mask: torch.Tensor  # (B, T) 1 on real response tokens
    rewards: torch.Tensor  # (B,)
    advantages: torch.Tensor  # (B,)
    group_ids: torch.Tensor  # (B,)
    old_logprobs: torch.Tensor | None  # (B, T)
    pg_weights: torch.Tensor | None  # (B, T) the policy-gradient term's token weights (None: all 1)
    routes: torch.Tensor | None  # (B * L, moe_layers, top_k) the rollout's experts, -1 where none
    pixel_values: torch.Tensor | None  # (sum P, 3, 14, 14) in sample order
    image_grid_hws: torch.Tensor | None  # (sum N, 2)
    # packed (collate_row): (1, L) positions restarting at each sequence; input_ids, prompt_mask
    # and routes are then one row, attention_mask is None, and response_index points into that row
    position_ids: torch.Tensor | None = None

    def to(self, device) -> Collated:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Collated(**moved)


def collate(samples: Sequence[Experience], pad_id: int) -> Collated:
    if not samples:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    width, resp_width = max(lengths), max(max(len(s.response_ids) for s in samples), 1)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(samples), width), dtype=torch.long)
    prompt_mask = torch.zeros((len(samples), width), dtype=torch.bool)
    index = torch.zeros((len(samples), resp_width), dtype=torch.long)
    mask = torch.zeros((len(samples), resp_width), dtype=torch.float32)
    old = torch.zeros((len(samples), resp_width), dtype=torch.float32)
    weights = torch.ones((len(samples), resp_width), dtype=torch.float32)
    for b, s in enumerate(samples):
        ids = list(s.prompt_ids) + list(s.response_ids)
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention[b, : len(ids)] = 1
        prompt_mask[b, : len(s.prompt_ids)] = True
        n, p = len(s.response_ids), len(s.prompt_ids)
        # shifted row t predicts token t + 1, so response token j sits at row p - 1 + j
        index[b, :n] = torch.arange(p - 1, p - 1 + n)
        mask[b, :n] = 1
        for f in s.forced:  # tokens the budget inserted are not the policy's choice: no loss on them
            mask[b, f] = 0
        mask[b, : s.loss_from] = 0
        for d in s.dropped:  # the off-policy correction left them out
            mask[b, d] = 0
        if s.pg_weights is not None:
            if len(s.pg_weights) != n:
                raise ValueError(f"sample {b}: {len(s.pg_weights)} token weights for {n} response tokens")
            weights[b, :n] = torch.tensor(s.pg_weights)
        if s.old_logprobs is not None:
            if len(s.old_logprobs) != n:
                raise ValueError(f"sample {b}: {len(s.old_logprobs)} old log-probs for {n} response tokens")
            old[b, :n] = torch.tensor(s.old_logprobs)
    have_old = all(s.old_logprobs is not None for s in samples)
    images = [s for s in samples if s.pixel_values is not None]
    return Collated(
        input_ids=input_ids,
        attention_mask=attention,
        prompt_mask=prompt_mask,
        response_index=index,
        response_mask=mask,
        rewards=torch.tensor([float(s.reward) for s in samples]),
        advantages=torch.tensor([float(s.advantage) for s in samples]),
        group_ids=torch.tensor([int(s.group_id) for s in samples]),
        old_logprobs=old if have_old else None,
        pg_weights=weights if any(s.pg_weights is not None for s in samples) else None,
        routes=collate_routes([s.routes for s in samples], width),
        pixel_values=torch.cat([s.pixel_values for s in images]) if images else None,
        image_grid_hws=torch.cat([s.image_grid_hws for s in images]) if images else None,
    )


def collate_row(samples: Sequence[Experience], pad_id: int) -> Collated:
    """The samples as one packed row (see the module docstring); per-response tensors as :func:`collate`."""
    padded = collate(samples, pad_id)
    ids, positions, prompt, index, routes = [], [], [], torch.zeros_like(padded.response_index), []
    start = 0
    for b, s in enumerate(samples):
        row = list(s.prompt_ids) + list(s.response_ids)
        p, n = len(s.prompt_ids), len(s.response_ids)
        ids += row
        positions += range(len(row))
        prompt += [True] * p + [False] * n
        # the shifted row: position t predicts token t + 1, so response token j is predicted at
        # start + p - 1 + j (never across a boundary: the last token of a sequence predicts nothing)
        index[b, :n] = torch.arange(start + p - 1, start + p - 1 + n)
        own = collate_routes([s.routes], len(row))
        routes.append(own if own is not None else len(row))
        start += len(row)
    padded.input_ids = torch.tensor([ids], dtype=torch.long)
    padded.position_ids = torch.tensor([positions], dtype=torch.long)
    padded.prompt_mask = torch.tensor([prompt], dtype=torch.bool)
    padded.attention_mask = None
    padded.response_index = index
    padded.routes = _packed_routes(routes)
    return padded


def _packed_routes(parts: list[torch.Tensor | int]) -> torch.Tensor | None:
    """One row's replay tensor from each sequence's (tokens, layers, k) part, or its token count where it
    has no routes (then -1 there)."""
    shaped = [p for p in parts if isinstance(p, torch.Tensor)]
    if not shaped:
        return None
    layers, k = shaped[0].shape[1:]
    return torch.cat([p if isinstance(p, torch.Tensor) else torch.full((p, layers, k), -1) for p in parts])


def pack_by_tokens(samples: Sequence[Experience], budget: int) -> list[list[int]]:
    """Indices of ``samples`` in micro-batches of at most ``budget`` tokens (prompt + response) each,
    longest first, each into the first micro-batch it fits (first-fit decreasing); a sequence longer
    than the budget is a micro-batch of its own."""
    if budget < 1:
        raise ValueError(f"micro_batch_tokens must be >= 1, got {budget}")
    bins: list[list[int]] = []
    room: list[int] = []
    for i in reversed(by_length(samples)):
        n = len(samples[i].prompt_ids) + len(samples[i].response_ids)
        at = next((b for b, left in enumerate(room) if n <= left), None)
        if at is None:
            bins.append([i])
            room.append(budget - n)
        else:
            bins[at].append(i)
            room[at] -= n
    return bins


def micro_batches(samples: Sequence[Experience], size: int) -> list[list[Experience]]:
    if size < 1:
        raise ValueError(f"micro batch size must be >= 1, got {size}")
    return [list(samples[i : i + size]) for i in range(0, len(samples), size)]


def by_length(samples: Sequence[Experience]) -> list[int]:
    """Indices of ``samples`` from shortest to longest sequence (stable).

    Micro-batches pad to their longest sequence; cut from a length-sorted list they hold similar lengths,
    so padding stays small when responses range from a few tokens to the max (measured with
    ``kvrl bench scale``: learner time per token tripled at 1024-token max responses without this).
    """
    return sorted(
        range(len(samples)), key=lambda i: len(samples[i].prompt_ids) + len(samples[i].response_ids)
    )


def shard_for_ranks(items: Sequence[Any], world_size: int, pad: Any) -> list[list[Any]]:
    """Split items round-robin into ``world_size`` equal-size shards, filling short ones with ``pad``.

    Equal shards keep ZeRO-3's per-forward collectives in step across ranks.
    """
    shards = [list(items[r::world_size]) for r in range(world_size)]
    size = max(len(s) for s in shards)
    return [s + [pad] * (size - len(s)) for s in shards]


def inactive(sample: Experience) -> Experience:
    """A copy with no response tokens: it contributes nothing to any loss (padding for equal shards)."""
    empty = {k: [] if getattr(sample, k) is not None else None for k in ("old_logprobs", "pg_weights")}
    return replace(sample, response_ids=[], dropped=[], **empty)
