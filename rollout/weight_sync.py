"""vLLM worker extension (``worker_extension_cls``) that loads a full state into the live model: the
``rollout.weight_sync: object_store`` path (the default, streamed one is ``rollout/stream.py``).

It hands ``(name, tensor)`` pairs under the official checkpoint names to the model runner's in-place
``reload_weights``, which re-applies vLLM's weight processing (fused QKV/MoE layouts, CPU GEMM
repacking) and drops caches derived from the old weights (encoder outputs, multimodal cache).

One gap is closed here: on CPU, ``reload_weights`` leaves routed-expert weights in checkpoint
layout, while vLLM's CPU MoE kernel reads them prepacked, so logits silently drift after a sync.
The experts' own ``process_weights_after_loading`` is run again on each such layer
(``tests/actors/test_cycle.py::test_sample_score_learn_sync`` checks rollout/learner parity after a
sync).
"""

from __future__ import annotations

from rollout.routing import RouteRecording


def _cpu_experts(layer):
    impl = getattr(getattr(getattr(layer, "quant_method", None), "moe_kernel", None), "impl", None)
    experts = getattr(impl, "fused_experts", None)
    if experts is not None and type(experts).__name__.endswith("CPUUnquantizedExperts"):
        return experts
    return None


def prepack_cpu_experts(model) -> None:
    """Run the CPU experts' own weight processing again after a reload (see the module docstring)."""
    for layer in model.modules():
        experts = _cpu_experts(layer)
        if experts is not None:
            experts.process_weights_after_loading(layer)


class WeightReceiver(RouteRecording):
    """kvrl's worker extension: weight loading here, routing recording from ``rollout/routing.py``."""

    def kvrl_load_weights(self, weights: list) -> int:
        """Reload the model from ``weights`` in place; returns the number of tensors received."""
        self.model_runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        prepack_cpu_experts(self.model_runner.model)
        return len(weights)
