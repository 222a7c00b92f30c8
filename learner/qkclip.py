"""QK-clip (MuonClip, Kimi K2 §2.1) for MLA: every attention head's largest pre-softmax logit kept at τ.

While the learner trains, each attention layer of the language model records, per head h, S_max^h: the
largest logit it computed in the step's forward passes (q·k times the softmax scale, over the positions
the mask lets it see). After the optimizer step, a head with S_max^h > τ has its weights rescaled so that
its logits on the same inputs shrink by γ_h = τ / S_max^h, split as K2 splits it for MLA: the head's
non-rotary query rows (``q_proj`` or ``q_b_proj``) and its key rows of ``kv_b_proj`` by sqrt(γ_h) each,
its rotary query rows by γ_h; the rotary key (``kv_a_proj_with_mqa``) is shared by all heads and stays,
and so do the value rows. The maxima are reduced over data-parallel ranks first (every rank scales alike).

Recording costs a second q·kᵀ per layer, a block of queries at a time and without gradient (K2 computes
the maximum inside its attention kernel). It goes through an attention function registered with
transformers (sdpa after the recording), so the model code is transformers' own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "kvrl_qk_clip"
QUERY_BLOCK = 256  # query rows per q·kᵀ block when recording: (B, H, 256, S) floats at a time
_RECORD = "kvrl_record_logits"  # module flag: record in this forward (set while training)
_MAX = "kvrl_logit_max"  # module attribute: (H,) running maximum since the last clip


def _allowed(mask: torch.Tensor | None, rows: slice, q_len: int, k_len: int, device) -> torch.Tensor:
    """(B or 1, 1, r, S) bool: which keys each query row of the block may see."""
    if mask is None:  # sdpa's own causal mask; queries are the last q_len positions
        i = torch.arange(rows.start, rows.stop, device=device)[:, None] + (k_len - q_len)
        return (torch.arange(k_len, device=device)[None, :] <= i)[None, None]
    block = mask[..., rows, :]
    return block if block.dtype == torch.bool else block > torch.finfo(block.dtype).min / 2


def record_max_logits(module, query, key, mask, scaling: float) -> None:
    """Fold this forward's per-head maximum logit into ``module``'s running maximum (no gradient)."""
    with torch.no_grad():
        q_len, k_len = query.shape[2], key.shape[2]
        top = torch.full((query.shape[1],), -math.inf, device=query.device)
        kt = key.float().transpose(-1, -2)
        for start in range(0, q_len, QUERY_BLOCK):
            rows = slice(start, min(start + QUERY_BLOCK, q_len))
            logits = (query[:, :, rows].float() @ kt) * scaling  # (B, H, r, S)
            logits = logits.masked_fill(~_allowed(mask, rows, q_len, k_len, query.device), -math.inf)
            top = torch.maximum(top, logits.amax(dim=(0, 2, 3)))
        prev = getattr(module, _MAX, None)
        setattr(module, _MAX, top if prev is None else torch.maximum(prev, top))


def _attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    if getattr(module, _RECORD, False):
        record_max_logits(module, query, key, attention_mask, scaling or query.shape[-1] ** -0.5)
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


AttentionInterface.register(ATTENTION, _attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def attention_layers(model) -> list[torch.nn.Module]:
    """The MLA modules of the language model, in layer order."""
    return [layer.self_attn for layer in model.language_model.model.layers]


def enable(model) -> None:
    """Route the language model's attention through the recording function (sdpa after it)."""
    model.language_model.config._attn_implementation = ATTENTION


@contextmanager
def recording(model) -> Iterator[None]:
    """Record each layer's per-head maximum logit in the forwards run inside."""
    layers = attention_layers(model)
    for m in layers:
        setattr(m, _RECORD, True)
    try:
        yield
    finally:
        for m in layers:
            setattr(m, _RECORD, False)


def take_max_logits(model) -> list[torch.Tensor | None]:
    """Each layer's (H,) maximum since the last call (None where nothing ran), and reset them."""
    out = []
    for m in attention_layers(model):
        out.append(getattr(m, _MAX, None))
        setattr(m, _MAX, None)
    return out


def head_row_factors(attn, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row factors of the query weight (H x (nope + rope) rows) and of ``kv_b_proj`` (H x (nope + v)
    rows) for per-head γ (H,): sqrt(γ) on the non-rotary query and key rows, γ on the rotary query rows,
    1 on the value rows."""
    nope, rope, v = attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.v_head_dim
    root = gamma.sqrt()[:, None]
    query = torch.cat([root.expand(-1, nope), gamma[:, None].expand(-1, rope)], dim=1)
    kv = torch.cat([root.expand(-1, nope), torch.ones_like(root).expand(-1, v)], dim=1)
    return query.reshape(-1), kv.reshape(-1)


def query_weight(attn) -> torch.nn.Parameter:
    return (attn.q_proj if attn.q_lora_rank is None else attn.q_b_proj).weight


def clip(
    model,
    tau: float,
    maxima: list[torch.Tensor | None],
    scale_rows: Callable[[torch.nn.Parameter, torch.Tensor], None],
) -> dict[str, float]:
    """Rescale every head whose maximum logit passed τ; ``scale_rows(param, factors)`` multiplies a
    weight's rows in place (the learner does it on its master weights and its module alike).
    Returns ``qk_clip_heads`` (heads rescaled) and ``max_logit`` (the largest maximum, before)."""
    clipped, largest = 0, -math.inf
    for attn, top in zip(attention_layers(model), maxima, strict=True):
        if top is None:
            continue
        largest = max(largest, float(top.max()))
        over = top > tau
        if not bool(over.any()):
            continue
        clipped += int(over.sum())
        gamma = torch.where(over, tau / top, torch.ones_like(top))
        q_rows, kv_rows = head_row_factors(attn, gamma)
        scale_rows(query_weight(attn), q_rows)
        scale_rows(attn.kv_b_proj.weight, kv_rows)
    return {"qk_clip_heads": float(clipped), "max_logit": largest}
