"""Which attention and routed-expert kernels the learner's language model runs: chosen explicitly,
said once, and never swapped for a slower one in silence.

Experts: transformers' ``grouped_mm`` (all of a layer's experts in one grouped matmul per projection)
through :data:`EXPERTS`, a thin wrapper that notes on each call which path the tensors allow. Where
``torch``'s grouped matmul cannot take them (a GPU older than compute capability 8.0, a torch without
the op, CPU tensors off 16-byte alignment on torch <= 2.10, or non-bf16 weights under
``torch.compile``), transformers runs a per-expert loop instead; the wrapper logs that once per process
with the reason. A transformers without ``grouped_mm`` gets its eager per-expert loop, logged the same.

Attention (the language model's MLA: q/k head 192, v head 128):
- QK-clip's recording attention when ``learner.qk_clip`` is set (``learner/qkclip.py``; SDPA after it);
- on CUDA with FlashAttention installed (3 before 2), transformers' flash path, which pads V up to the
  q/k head size and crops the output, and runs packed rows as variable-length sequences from their
  position resets;
- packed rows otherwise: one SDPA per sequence (``learner/packing.py`` ``PACKED_ATTENTION``);
- padded batches otherwise: torch SDPA, which picks its own backend.

:func:`pin_kernels` sets both and returns what it chose; :func:`kernels_ran` says which expert paths
forwards have taken since.
"""

from __future__ import annotations

import logging

import torch
from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

from learner import qkclip
from learner.packing import PACKED_ATTENTION

log = logging.getLogger(__name__)

try:  # transformers >= 5: the experts interface
    from transformers.integrations import moe
    from transformers.integrations.moe import ExpertsInterface, grouped_mm_experts_forward
except ImportError:  # pragma: no cover - older transformers: the eager loop, said so by pin_kernels
    ExpertsInterface = None

EXPERTS = "kvrl_grouped_mm"
GROUPED = "grouped_mm"
LOOP = "per-expert loop"
_ran: dict[str, str] = {}  # expert path -> the reason it was taken (empty for grouped_mm)


def grouped_mm_blocker(hidden: torch.Tensor, weight: torch.Tensor) -> str | None:
    """Why torch's grouped matmul cannot take these tensors, or None when it can (transformers'
    ``_can_use_grouped_mm`` decides; this only explains)."""
    if moe._can_use_grouped_mm(hidden, weight, None):  # the same test as transformers' _grouped_mm
        return None
    grouped = hasattr(torch.nn.functional, "grouped_mm") or hasattr(torch, "_grouped_mm")
    if not grouped:
        return f"torch {torch.__version__} has no grouped_mm"
    if torch.compiler.is_compiling() and weight.dtype != torch.bfloat16:
        return f"under torch.compile grouped_mm takes bf16 only, and the experts are {weight.dtype}"
    if weight.device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(weight.device)
        name = torch.cuda.get_device_name(weight.device)
        return f"grouped_mm needs compute capability 8.0 or newer; {name} has {major}.{minor}"
    if weight.device.type == "cpu":
        aligned = weight.data_ptr() % 16 == 0 and hidden.data_ptr() % 16 == 0
        detail = "" if aligned else ", and these tensors are not 16-byte aligned"
        return f"torch {torch.__version__}'s CPU grouped_mm is missing or limited{detail}"
    return f"transformers does not take grouped_mm on {weight.device.type}"


def _note(path: str, reason: str = "") -> None:
    if path in _ran:
        return
    _ran[path] = reason
    if reason:
        log.warning("routed experts run as a %s, not grouped_mm: %s", path, reason)
    else:
        log.info("routed experts run as grouped_mm")


def _experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """transformers' grouped_mm experts, after noting whether the grouped kernel takes these tensors
    (its own fallback, the per-expert loop, runs where it does not)."""
    reason = grouped_mm_blocker(hidden_states, self.gate_up_proj)
    _note(LOOP if reason else GROUPED, reason or "")
    return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)


if ExpertsInterface is not None:
    ExpertsInterface.register(EXPERTS, _experts_forward)


def kernels_ran() -> dict[str, str]:
    """The expert paths forwards took in this process, each with the reason ("" for grouped_mm)."""
    return dict(_ran)


def _attention(device_type: str, packed: bool, qk_clip: bool) -> tuple[str, str]:
    if qk_clip:
        return qkclip.ATTENTION, "QK-clip records each head's largest logit, then SDPA"
    if device_type == "cuda":
        for name, available in (
            ("flash_attention_3", is_flash_attn_3_available),
            ("flash_attention_2", is_flash_attn_2_available),
        ):
            if available():
                return name, "FlashAttention installed; V padded to the q/k head size; packed rows run varlen"
    why = "flash-attn is not installed" if device_type == "cuda" else f"no FlashAttention on {device_type}"
    if packed:
        return PACKED_ATTENTION, f"one SDPA per packed sequence ({why})"
    return "sdpa", f"torch SDPA picks its backend ({why})"


def pin_kernels(model, device_type: str, packed: bool, qk_clip: bool = False) -> dict[str, str]:
    """Set the language model's attention and experts implementations and log them once. ``packed``:
    micro-batches come as packed rows (``learner.micro_batch_tokens``, SFT packing)."""
    config = model.language_model.config
    attention, attention_why = _attention(device_type, packed, qk_clip)
    config._attn_implementation = attention
    if ExpertsInterface is None:
        experts, experts_why = "eager", "this transformers has no grouped_mm experts: a per-expert loop"
        _note(LOOP, experts_why)
    else:
        experts, experts_why = EXPERTS, "transformers' grouped_mm; a per-expert loop in its place is logged"
    config._experts_implementation = experts
    chosen = {"attention": attention, "attention_reason": attention_why}
    chosen |= {"experts": experts, "experts_reason": experts_why}
    log.info("learner kernels: attention %s (%s); experts %s (%s)", *chosen.values())
    return chosen
