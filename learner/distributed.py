"""A learner rank's start: its place in DeepSpeed's process group, and its model, built partitioned under
ZeRO-3. Kept free of the rank's own state, so that tests and benchmarks start ranks the way
``learner/rank.py`` does."""

from __future__ import annotations

import os
from typing import Any

import torch

from kimivl import KimiVLForConditionalGeneration
from learner.opbuild import clear_stale_build_lock, prepare_op_builds


def device_kind() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# DeepSpeed's ZeRO buffer sizes (elements), stated here so that kvrl plan counts the same ones
# (actors/plan_memory.py): the gradient bucket reduced at once, and under ZeRO-3 the parameters
# fetched ahead of the module that needs them. DeepSpeed 0.19's defaults.
ZERO_BUCKETS = {"reduce_bucket_size": 500_000_000, "stage3_prefetch_bucket_size": 50_000_000}


def start_distributed() -> str:
    """This process's rank in DeepSpeed's process group (gloo on CPU, NCCL on GPU; ranks from the
    environment), with the CPU comm op found where ``scripts/setup.sh`` built it; the device kind."""
    import deepspeed

    device = device_kind()
    if device == "cpu":
        prepare_op_builds()
        clear_stale_build_lock()
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo", auto_mpi_discovery=False)
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return device


def load_model(path: str, dtype: torch.dtype, ds_config: dict[str, Any]) -> torch.nn.Module:
    """The model in ``path``. Under ZeRO-3 (``ds_config``'s stage) it is built inside
    ``deepspeed.zero.Init``, through transformers' DeepSpeed integration, which then loads each module's
    weights gathered and partitions them again: no rank ever holds the whole model, only its shard
    (the process group must be up)."""
    if ds_config["zero_optimization"]["stage"] != 3:
        return KimiVLForConditionalGeneration.from_pretrained(path, dtype=dtype)
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    hf_config = HfDeepSpeedConfig(ds_config)  # transformers keeps only a weak reference: hold it
    try:
        return KimiVLForConditionalGeneration.from_pretrained(path, dtype=dtype)
    finally:
        del hf_config
        unset_hf_deepspeed_config()
