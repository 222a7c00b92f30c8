"""vLLM's reload warnings about weights it derives in place stay quiet on a weight sync, and a weight
that is really missing is still reported (``kimivl/vllm_plugin.py``, ``DerivedWeightsFilter``)."""

from __future__ import annotations

import logging

import pytest

from kimivl.vllm_plugin import RELOAD_LOGGERS, quiet_derived_weight_warnings

LAYERWISE, INPLACE = RELOAD_LOGGERS


@pytest.fixture
def caught(caplog):
    quiet_derived_weight_warnings()
    quiet_derived_weight_warnings()  # once per process however often vLLM loads the plugin
    assert all(len(logging.getLogger(n).filters) == 1 for n in RELOAD_LOGGERS)
    caplog.set_level(logging.WARNING)
    return caplog


def test_derived_weights_are_quiet_and_missing_ones_are_reported(caught):
    layerwise, inplace = logging.getLogger(LAYERWISE), logging.getLogger(INPLACE)
    # as vLLM logs them (vllm/model_executor/model_loader/reload/layerwise.py and inplace.py)
    layerwise.warning("%s: Failed to load weights", "RotaryEmbedding")
    layerwise.warning("%s: Failed to load weights", "DeepseekScalingRotaryEmbedding")
    mla = {"language_model.model.layers.0.self_attn.W_UV", "language_model.model.layers.0.self_attn.W_UK_T"}
    inplace.warning("Following weights were not loaded from checkpoint: %s", mla)
    assert caught.records == []
    layerwise.warning("%s: Failed to load weights", "ColumnParallelLinear")
    missing = mla | {"language_model.model.layers.1.mlp.experts.w13_weight"}
    inplace.warning("Following weights were not loaded from checkpoint: %s", missing)
    said = [r.getMessage() for r in caught.records]
    assert said[0] == "ColumnParallelLinear: Failed to load weights"
    assert "experts.w13_weight" in said[1] and len(said) == 2
