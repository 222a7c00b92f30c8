"""One step on the same batch is the same step on 1 learner rank and on 2 (DeepSpeed ZeRO-2 over gloo).

DeepSpeed averages gradients over ranks, so each rank must divide its loss by the batch's size over
world_size; and group statistics must come from whole groups, which a rank shard never holds. With
lr = 0 the weights stay put, so one pair of groups serves every loss and the SFT step.
"""

from __future__ import annotations

import math

import pytest
import torch

from actors.learner import LearnerGroup
from learner.experience import Experience
from learner.rank import LearnerConfig
from rl.losses import LOSSES, assign_advantages, get_loss
from sft.loss import sft_loss
from tests.helpers import sft_rows

OPTIONS = {"opmd": {"tau": 0.5}, "grpo": {"clip_eps": 0.2}, "reinforce": {}}


@pytest.fixture(scope="module")
def groups(tiny_dir, ray_cluster):
    # 1 rank x 1 micro-batch against 2 ranks x 2 micro-batches (micro_batch_size 2 on 3-4 samples each),
    # and 2 ZeRO-3 ranks that pack their samples into rows of 12 tokens (learner.micro_batch_tokens):
    # their shards make 5 and 4 rows (lengths 5, 10, 11, 9, 10 and 11, 9, 10, 8 + a 3-token pad), and
    # the rank with fewer runs an empty one
    one = LearnerGroup(str(tiny_dir), LearnerConfig(zero_stage=2, lr=0.0, micro_batch_size=64), 1)
    two = LearnerGroup(str(tiny_dir), LearnerConfig(zero_stage=2, lr=0.0, micro_batch_size=2), 2)
    packed = LearnerGroup(str(tiny_dir), LearnerConfig(zero_stage=3, lr=0.0, micro_batch_tokens=12), 2)
    yield one, two, packed
    for group in (one, two, packed):
        group.shutdown()


def rl_batch(one: LearnerGroup) -> list[Experience]:
    """3 groups of 3 samples of different lengths; old log-probs a little off the current policy, so
    the OPMD tau term and the clipped ratio both act."""
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(9):
        prompt = torch.randint(10, 200, (3 + i % 4,), generator=g).tolist()
        response = torch.randint(10, 200, (2 + (5 * i) % 7,), generator=g).tolist()
        samples.append(Experience(prompt, response, reward=float(i % 2 or i == 6), group_id=i // 3))
    for s, lp in zip(samples, one.logprobs(samples), strict=True):
        noise = 0.3 * torch.randn(len(lp), generator=g)
        s.old_logprobs = (torch.tensor(lp) + noise).tolist()
    return samples


def close(a: float, b: float, rel: float) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-7)


@pytest.mark.slow
def test_every_loss_takes_the_same_step_on_one_and_two_ranks(groups):
    one, two, packed = groups
    batch = rl_batch(one)
    for a, b in zip(one.logprobs(batch), packed.logprobs(batch), strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-5
    for name in sorted(LOSSES):
        options = OPTIONS[name]
        assign_advantages(batch, get_loss(name), options)
        a = {k: float(v) for k, v in one.train_step(batch, get_loss(name).bound(options)).items()}
        for other in (two, packed):
            b = {k: float(v) for k, v in other.train_step(batch, get_loss(name).bound(options)).items()}
            assert a["skipped"] == b["skipped"] == 0.0 and a["grad_norm"] > 0
            for key in ("loss", "grad_norm", "kl", "log_ratio_sq", "entropy"):
                assert close(a[key], b[key], 1e-5), (name, key, a[key], b[key])


@pytest.mark.slow
def test_sft_step_has_the_same_gradient_on_one_and_two_ranks(groups):
    one, two, _ = groups
    rows = sft_rows()
    a, b = one.sft_step(rows, 0.0, sft_loss), two.sft_step(rows, 0.0, sft_loss)
    assert a["tokens"] == b["tokens"] and close(a["nll_sum"], b["nll_sum"], 1e-5)
    assert a["grad_norm"] > 0
    assert close(a["grad_norm"], b["grad_norm"], 1e-4), (a["grad_norm"], b["grad_norm"])


@pytest.mark.slow
def test_a_group_that_cannot_start_leaves_no_rank_behind(ray_cluster, tmp_path):
    import time

    import ray

    from tests.helpers import ray_leftovers

    before = ray_leftovers()
    # (the traceback, kept as a test report keeps it, holds the group's actor handles: Ray alone would
    # end the actors only once every handle is gone)
    with pytest.raises(ray.exceptions.RayTaskError, match="missing") as caught:
        LearnerGroup(str(tmp_path / "missing"), LearnerConfig(zero_stage=2), 2)
    assert caught.tb is not None
    deadline = time.monotonic() + 10  # ray.kill returns before the actor is gone
    while ray_leftovers(before)[0] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ray_leftovers(before)[0]
