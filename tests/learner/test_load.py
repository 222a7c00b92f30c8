"""How a learner rank builds its model and DeepSpeed engine: ZeRO-3 builds it partitioned (zero.Init),
and bfloat16 training accumulates gradients in float32."""

from __future__ import annotations

import pytest
import torch

from kimivl import KimiVLForConditionalGeneration
from learner.distributed import load_model, start_distributed
from learner.rank import Learner, LearnerConfig, deepspeed_config


@pytest.fixture(scope="module")
def group(single_rank):
    start_distributed()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zero3_builds_the_model_partitioned_with_the_checkpoint_weights(tiny_dir, group, dtype):
    import deepspeed

    plain = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=dtype)
    model = load_model(str(tiny_dir), dtype, deepspeed_config(LearnerConfig(zero_stage=3), dtype))
    params = dict(model.named_parameters())
    # partitioned as built, before deepspeed.initialize: each parameter is a placeholder with a shard
    assert all(p.numel() == 0 and hasattr(p, "ds_tensor") for p in params.values())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        got = {name: t.clone() for name, t in model.checkpoint_tensors()}
    want = dict(plain.checkpoint_tensors())
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert got["language_model.model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    # below ZeRO-3 the model is whole, as before
    whole = load_model(str(tiny_dir), dtype, deepspeed_config(LearnerConfig(zero_stage=2), dtype))
    assert all(p.numel() > 0 for p in whole.parameters())


def test_bf16_accumulates_gradients_in_fp32(tiny_dir, group):
    fp32 = {"grad_accum_dtype": "fp32"}
    assert deepspeed_config(LearnerConfig(zero_stage=3), torch.bfloat16)["data_types"] == fp32
    assert deepspeed_config(LearnerConfig(zero_stage=2), torch.bfloat16)["data_types"] == fp32
    off = LearnerConfig(zero_stage=3, fp32_grad_accum=False)
    assert "data_types" not in deepspeed_config(off, torch.bfloat16)
    assert "data_types" not in deepspeed_config(LearnerConfig(zero_stage=0), torch.bfloat16)
    # DeepSpeed keeps ZeRO-3's gradient partitions in that dtype
    learner = Learner(str(tiny_dir), LearnerConfig(zero_stage=3, dtype="bfloat16"))
    assert learner.engine.optimizer.grad_partitions_flat_buffer.dtype == torch.float32
