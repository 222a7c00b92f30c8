"""The learner rank on CUDA: DeepSpeed ZeRO-2/3 over NCCL in bf16 takes an RL step and an SFT step,
saves and reloads its full training state, and exports weights that load again.

Run where a GPU is lent: ``python -m pytest tests/learner/test_rank_cuda.py tests/kimivl/test_cuda.py``."""

from __future__ import annotations

import pytest
import torch

from kimivl import KimiVLForConditionalGeneration
from learner.experience import Experience
from learner.packing import SFTExample
from learner.rank import Learner, LearnerConfig
from rl.losses import assign_advantages, get_loss
from sft.loss import sft_loss

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_step_on_nccl(tiny_dir, single_rank, stage):
    learner = Learner(str(tiny_dir), LearnerConfig(zero_stage=stage, lr=1e-2, micro_batch_size=2))
    assert learner.dtype == torch.bfloat16 and learner.device.type == "cuda"
    assert torch.distributed.get_backend() == "nccl"
    samples = [Experience([5, 6, 7], [10 + i, 11, 12], reward=float(i % 2), group_id=0) for i in range(4)]
    for s, lp in zip(samples, learner.logprobs(samples), strict=True):
        s.old_logprobs = lp
    assign_advantages(samples, get_loss("opmd"), {"tau": 1.0})
    before = learner.full_state()
    metrics = learner.train_step(samples, get_loss("opmd").bound({"tau": 1.0}), len(samples))
    after = learner.full_state()
    assert float(metrics["skipped"]) == 0.0
    assert all(torch.isfinite(torch.tensor(float(v))) for v in metrics.values())
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert "language_model.lm_head.weight" in changed


@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_sft_step_state_and_export(tiny_dir, single_rank, stage, tmp_path):
    learner = Learner(str(tiny_dir), LearnerConfig(zero_stage=stage, lr=1e-2, micro_batch_size=2))
    rows = [[SFTExample([5, 6, 7, 8, 9], [0, 0, 1, 1, 1])], [SFTExample([5, 9, 9, 4], [0, 1, 1, 1])]]
    metrics = learner.sft_step(rows, 6, 1e-2, sft_loss)
    assert metrics["skipped"] == 0.0 and metrics["tokens"] == 6 and metrics["grad_norm"] > 0
    learner.save_state(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "learner_state").is_dir()
    again = Learner(str(tiny_dir), LearnerConfig(zero_stage=stage, lr=1e-2), state_dir=str(tmp_path / "ckpt"))
    assert again.steps == learner.steps == 1
    want = learner.full_state()
    got = again.full_state()
    assert all(torch.equal(want[n], got[n]) for n in want)
    out = learner.export_hf(tmp_path / "export")
    model = KimiVLForConditionalGeneration.from_pretrained(out, dtype=torch.bfloat16)
    lm_head = dict(model.checkpoint_tensors())["language_model.lm_head.weight"]
    assert torch.equal(lm_head, want["language_model.lm_head.weight"])
