"""Packed rows of teacher-forced examples, as one learner forward sees them.

Method: examples are laid end to end in a row and each example's ``position_ids`` restart at 0. With
no 2-D attention mask and no KV cache, transformers reads those resets as segment boundaries and
builds a block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``): a token attends
only to earlier tokens of its own example, and RoPE sees each example at its own positions.
:func:`packed_logits` calls the model that way. The last token of an example predicts nothing (its
target would be the next example's first token), and the padding at a row's end is a segment of its
own with no targets. So a packed row gives every example the same logits as a row of its own;
``tests/learner/test_packing.py`` checks the loss matches within 1e-5. Which examples share a row is
decided by ``sft/packing.py``.

Images: a row's ``pixel_values`` are its examples' images in order, matching the order of the
``<|media_pad|>`` runs in the row.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask


@dataclass
class SFTExample:
    """One tokenized conversation. ``labels_mask[i]`` is 1 where token i is a training target."""

    input_ids: list[int]
    labels_mask: list[int]
    pixel_values: torch.Tensor | None = None  # (P, 3, 14, 14)
    image_grid_hws: torch.Tensor | None = None  # (N, 2)
    id: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_targets(self) -> int:
        # token 0 is never predicted (nothing precedes it), so it cannot be a target
        return sum(self.labels_mask[1:])


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L) restarting at 0 for each example (and for the padding)
    targets: torch.Tensor  # (B, L) the token position t predicts (pad where none)
    loss_mask: torch.Tensor  # (B, L) 1.0 where targets[t] is a trained assistant token
    pixel_values: torch.Tensor | None  # (sum P, 3, 14, 14) in row, then example order
    image_grid_hws: torch.Tensor | None  # (sum N, 2)

    def to(self, device) -> PackedBatch:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return PackedBatch(**moved)

    @property
    def num_targets(self) -> int:
        return int(self.loss_mask.sum())


def _row(examples: Sequence[SFTExample], pad_id: int) -> tuple[list[int], list[int], list[int], list[float]]:
    ids, pos, tgt, mask = [], [], [], []
    for ex in examples:
        n = len(ex.input_ids)
        ids += ex.input_ids
        pos += range(n)
        tgt += [*ex.input_ids[1:], pad_id]
        mask += [float(m) for m in ex.labels_mask[1:]] + [0.0]
    if not ids:  # an empty row (padding for equal shards over ranks): one pad token, no targets
        return [pad_id], [0], [pad_id], [0.0]
    return ids, pos, tgt, mask


def collate_packed(rows: Sequence[Sequence[SFTExample]], pad_id: int) -> PackedBatch:
    """(B rows of examples) -> right-padded tensors; ``rows=[[e] for e in examples]`` is unpacked."""
    if not rows:
        raise ValueError("cannot collate an empty batch")
    built = [_row(r, pad_id) for r in rows]
    width = max(len(ids) for ids, _, _, _ in built)
    out = {
        name: torch.full((len(rows), width), fill, dtype=dtype)
        for name, fill, dtype in (
            ("input_ids", pad_id, torch.long),
            ("position_ids", 0, torch.long),
            ("targets", pad_id, torch.long),
            ("loss_mask", 0.0, torch.float32),
        )
    }
    for b, (ids, pos, tgt, mask) in enumerate(built):
        n = len(ids)
        out["input_ids"][b, :n] = torch.tensor(ids)
        out["position_ids"][b, :n] = torch.tensor(pos)
        out["position_ids"][b, n:] = torch.arange(width - n)  # the padding: a segment of its own
        out["targets"][b, :n] = torch.tensor(tgt)
        out["loss_mask"][b, :n] = torch.tensor(mask)
    images = [ex for r in rows for ex in r if ex.pixel_values is not None]
    return PackedBatch(
        **out,
        pixel_values=torch.cat([ex.pixel_values for ex in images]) if images else None,
        image_grid_hws=torch.cat([ex.image_grid_hws for ex in images]) if images else None,
    )


def packed_logits(model, batch: PackedBatch, hidden_states_only: bool = False) -> torch.Tensor:
    """(B, L, V) logits of a packed batch, each example attending only to itself; (B, L, H) final hidden
    states instead with ``hidden_states_only`` (for a head applied a chunk at a time)."""
    out = model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        pixel_values=batch.pixel_values,
        image_grid_hws=batch.image_grid_hws,
        attention_mask=None,  # with a 2-D mask transformers would not look for packed segments
        use_cache=False,  # nor with a cache
        hidden_states_only=hidden_states_only,
    )
    return out.last_hidden_state if hidden_states_only else out.logits


# Attention over a packed row, one sequence at a time (chosen by ``learner/kernels.py pin_kernels``).
PACKED_ATTENTION = "kvrl_packed"


def _packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA per sequence of a packed row (one row, no mask, positions restarting at each sequence,
    ``position_ids`` from the decoder layer): causal within each, nothing across, and no work on the
    blocks a block-diagonal mask would hide. Anything else (a mask, a batch of rows, a KV cache) goes to
    transformers' SDPA as usual."""
    positions = kwargs.get("position_ids")
    whole = query.shape[0] == 1 and query.shape[2] == key.shape[2] and query.shape[1] == key.shape[1]
    if attention_mask is not None or positions is None or not whole:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    starts = (positions.reshape(-1) == 0).nonzero().flatten().tolist()
    bounds = [0, *[s for s in starts if s > 0], query.shape[2]]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    outs = [
        sdpa(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling)
        for q, k, v in (
            (query[:, :, a:b], key[:, :, a:b], value[:, :, a:b]) for a, b in itertools.pairwise(bounds)
        )
    ]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _packed_mask(**kwargs):
    """No mask for a packed row (``_packed_attention`` keeps sequences apart); SDPA's otherwise."""
    return None if kwargs.get("attention_mask") is None else sdpa_mask(**kwargs)


AttentionInterface.register(PACKED_ATTENTION, _packed_attention)
AttentionMaskInterface.register(PACKED_ATTENTION, _packed_mask)
