"""The learner rank on CUDA: DeepSpeed ZeRO-2/3 over NCCL in bf16 takes a step and exports weights."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from rl.batch import Experience
from rl.learner import Learner, LearnerConfig
from rl.losses import get_loss
from rl.trainer import assign_advantages

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def single_rank_env():
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_step_on_nccl(tiny_dir, stage):
    learner = Learner(str(tiny_dir), LearnerConfig(zero_stage=stage, lr=1e-2, micro_batch_size=2))
    assert learner.dtype == torch.bfloat16 and learner.device.type == "cuda"
    assert torch.distributed.get_backend() == "nccl"
    samples = [Experience([5, 6, 7], [10 + i, 11, 12], reward=float(i % 2), group_id=0) for i in range(4)]
    for s, lp in zip(samples, learner.logprobs(samples), strict=True):
        s.old_logprobs = lp
    assign_advantages(samples, get_loss("opmd"), {"tau": 1.0})
    before = learner.full_state()
    metrics = learner.train_step(samples, "opmd", {"tau": 1.0}, len(samples))
    after = learner.full_state()
    assert float(metrics["skipped"]) == 0.0
    assert all(torch.isfinite(torch.tensor(float(v))) for v in metrics.values())
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert "language_model.lm_head.weight" in changed
