"""learner.optimizer: muon is Moonlight's Muon: two SFT steps on 2 ranks (DeepSpeed ZeRO-2 and ZeRO-3 over
gloo) against the same two steps worked out in one process with ``torch.optim.Muon``
(``adjust_lr_fn="match_rms_adamw"``: 0.2 * sqrt(max(A, B)) per matrix, weight decay lr * wd), each routed
expert's matrix as a matrix of its own, and ``torch.optim.AdamW`` for the rest. Also: the momentum is in the
full-state checkpoint (a resumed step equals the straight one) and ``reset_optimizer`` clears it.
"""

from __future__ import annotations

import pytest
import torch

from actors.learner import LearnerGroup
from kimivl import KimiVLForConditionalGeneration, KimiVLProcessor
from learner.optim import takes_muon
from learner.packing import collate_packed, packed_logits
from learner.rank import LearnerConfig
from sft.loss import sft_loss
from tests.helpers import sft_rows

LR, WD, MOMENTUM, BETAS, EPS = 2e-2, 0.1, 0.95, (0.9, 0.95), 1e-8


def config(stage: int) -> LearnerConfig:
    return LearnerConfig(
        zero_stage=stage,
        optimizer="muon",
        lr=LR,
        weight_decay=WD,
        muon_momentum=MOMENTUM,
        betas=list(BETAS),
        eps=EPS,
        micro_batch_size=2,
    )


def weights(group: LearnerGroup) -> dict[str, torch.Tensor]:
    import ray

    return ray.get(group.state_ref())


class Reference:
    """The same steps in one process: one full-batch gradient, torch's optimizers on every matrix."""

    def __init__(self, model_dir):
        self.model = KimiVLForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32)
        self.model.train()
        self.pad_id = KimiVLProcessor.from_pretrained(str(model_dir)).tokenizer.pad_token_id
        self.matrices: list[tuple[torch.nn.Parameter, int | None, torch.nn.Parameter]] = []
        adam = []
        for name, p in self.model.named_parameters():
            if not takes_muon(name, p.shape):
                adam.append(p)
                continue
            for e in range(p.shape[0]) if p.ndim == 3 else [None]:  # each expert on its own
                data = p.detach()[e] if e is not None else p.detach()
                self.matrices.append((p, e, torch.nn.Parameter(data.clone())))
        self.muon = torch.optim.Muon(
            [m for _, _, m in self.matrices],
            lr=LR,
            weight_decay=WD,
            momentum=MOMENTUM,
            nesterov=True,
            adjust_lr_fn="match_rms_adamw",
        )
        self.adam = torch.optim.AdamW(adam, lr=LR, weight_decay=WD, betas=BETAS, eps=EPS)

    def step(self, rows) -> None:
        self.model.zero_grad()
        batch = collate_packed(rows, self.pad_id)
        total = sum(ex.num_targets for row in rows for ex in row)
        loss, _ = sft_loss(packed_logits(self.model, batch), batch.targets, batch.loss_mask, total)
        loss.backward()
        for p, e, m in self.matrices:
            m.grad = (p.grad[e] if e is not None else p.grad).clone()
        self.muon.step()
        self.adam.step()
        with torch.no_grad():
            for p, e, m in self.matrices:
                (p[e] if e is not None else p).copy_(m)

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.checkpoint_tensors()}


def assert_same_steps(got: dict, want: dict, start: dict) -> None:
    """Each tensor moved from ``start`` as the reference moved it.

    Newton-Schulz runs in bf16 on both sides (``torch.optim.Muon`` always, DeepSpeed's "standard" where
    the device has bf16), and the two iterations round differently: on one 192 x 64 gradient they differ
    by 3% (norm of the difference over the norm), and the gradients differ in fp32 rounding (2 ranks x
    micro-batches against one batch). So an orthogonalized step is compared by its size (within 2%: the
    scale 0.2 * sqrt(max(A, B)) and per-expert shapes decide it, and a wrong one is off by 1.4x or more)
    and its direction (cosine >= 0.98); a tensor with no gradient (the vision tower: text-only rows)
    moves by weight decay alone, -lr * wd * W, which is compared to 1e-6.
    """
    moved = []
    for name, w in want.items():
        ours, theirs = (got[name] - start[name]).flatten(), (w - start[name]).flatten()
        size, decay = float(theirs.norm()), LR * WD * float(start[name].norm())
        if size <= 1.001 * decay:  # weight decay only
            assert float((ours - theirs).norm()) <= 1e-6, name
            continue
        cosine = float(ours @ theirs) / (float(ours.norm()) * size)
        moved.append((name, float(ours.norm()) / size, cosine))
    worst_size = max(moved, key=lambda m: abs(m[1] - 1))
    worst_direction = min(moved, key=lambda m: m[2])
    assert abs(worst_size[1] - 1) <= 0.02, worst_size
    assert worst_direction[2] >= 0.98, worst_direction
    assert len(moved) > len(want) // 2, len(moved)  # most tensors took a gradient step


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_muon_steps_on_two_ranks_are_moonlights(tiny_dir, ray_cluster, stage):
    rows = sft_rows()
    group = LearnerGroup(str(tiny_dir), config(stage), 2)
    try:
        start = weights(group)
        for _ in range(2):  # the second step's update carries the first's momentum
            out = group.sft_step(rows, LR, sft_loss)
            assert out["skipped"] == 0.0
        got = weights(group)
    finally:
        group.shutdown()
    ref = Reference(tiny_dir)
    for _ in range(2):
        ref.step(rows)
    assert_same_steps(got, ref.weights(), start)


@pytest.mark.slow
def test_muon_momentum_resumes_exactly_and_resets(tiny_dir, ray_cluster, tmp_path):
    rows, ckpt, after_two = sft_rows(), tmp_path / "ckpt", tmp_path / "after-two"
    straight = LearnerGroup(str(tiny_dir), config(2), 2)
    try:
        straight.sft_step(rows, LR, sft_loss)
        straight.save_state(str(ckpt))
        straight.sft_step(rows, LR, sft_loss)
        two_steps = weights(straight)
        straight.export_hf(str(after_two))
        straight.reset_optimizer()  # no momentum left: the next step is a first step again
        straight.sft_step(rows, LR, sft_loss)
        after_reset = weights(straight)
    finally:
        straight.shutdown()
    resumed = LearnerGroup(str(tiny_dir), config(2), 2, state_dir=str(ckpt))
    fresh = LearnerGroup(str(after_two), config(2), 2)  # the same weights, no optimizer state
    try:
        resumed.sft_step(rows, LR, sft_loss)
        fresh.sft_step(rows, LR, sft_loss)
        resumed_two, fresh_one = weights(resumed), weights(fresh)
    finally:
        resumed.shutdown()
        fresh.shutdown()
    for name, w in two_steps.items():
        assert torch.allclose(resumed_two[name], w, rtol=0, atol=1e-6), ("resume", name)
    for name, w in after_reset.items():
        assert torch.allclose(fresh_one[name], w, rtol=0, atol=1e-6), ("reset", name)
