"""Trajectories on the real engine: generated in chunks and across a weight update (a partial rollout
continued by the next iteration's policy), each token keeps the log-prob of the policy that sampled it."""

from __future__ import annotations

import pytest
import torch

from kimivl import KimiVLForConditionalGeneration
from learner.logprobs import response_logprobs
from rollout.prompts import chat_prompt
from rollout.trajectory import Trajectory
from rollout.worker import RolloutRequest, SamplingConfig
from tests.helpers import gradient_image

TOLERANCE = 1e-3  # fp32, max abs difference per token (tests/rollout/test_parity.py)


@pytest.mark.slow
def test_chunks_and_a_weight_update_keep_each_tokens_own_logprobs(worker, tiny_dir):
    v0 = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    v1 = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in v1.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))

    image = gradient_image(60, 40, 2)
    request = RolloutRequest("g@0", chat_prompt(worker.processor, "Count the shapes.", 1), [image], seed=5)
    trajectories = [Trajectory(request, j) for j in range(3)]
    sampling = SamplingConfig(n=3, max_tokens=32)
    worker.extend(trajectories, sampling, max_new=5, version=0)  # a chunk...
    assert all(len(t.response_ids) == 5 or t.done for t in trajectories)
    worker.extend(trajectories, sampling, max_new=5, version=0)  # ...continued on the same weights
    worker.update_weights(dict(v1.checkpoint_tensors()), version=1)
    try:
        worker.extend(trajectories, sampling, max_new=None, version=1)  # the rest, under the new policy
    finally:
        worker.update_weights(dict(v0.checkpoint_tensors()), version=0)
    assert all(t.done for t in trajectories)
    assert any(0 in t.born and 1 in t.born for t in trajectories)  # some span both policies

    enc = worker.processor.image_processor([image])
    policies_differ = 0.0
    for t in trajectories:
        assert len(t.logprobs) == len(t.response_ids) == len(t.born)
        with torch.no_grad():
            lp = [
                response_logprobs(m, t.prompt_ids, t.response_ids, enc["pixel_values"], enc["image_grid_hws"])
                for m in (v0, v1)
            ]
        born = torch.tensor(t.born)
        expected = torch.where(born == 0, lp[0], lp[1])
        gap = (expected - torch.tensor(t.logprobs)).abs().max().item()
        assert gap <= TOLERANCE, (t.key, gap)
        policies_differ = max(policies_differ, (lp[0] - lp[1]).abs().max().item())
    assert policies_differ > 100 * TOLERANCE  # so a token scored under the wrong policy would fail above


@pytest.mark.slow
def test_engine_stats_count_steps_and_busy_slots(worker):
    request = RolloutRequest("s@0", chat_prompt(worker.processor, "Say something.", 0), [], seed=1)
    trajectories = [Trajectory(request, j) for j in range(4)]
    worker.extend(trajectories, SamplingConfig(n=4, max_tokens=12), max_new=None, version=0)
    stats = worker.stats
    assert stats.tokens == sum(len(t.response_ids) for t in trajectories)
    assert stats.steps >= max(len(t.response_ids) for t in trajectories)  # one token per request per step
    # 4 sequences in 8 slots at most: at most half the slot-seconds of the engine's time
    assert 0 < stats.slot_seconds <= 4 * stats.seconds + 1e-9
    assert all(t.finished_at is not None for t in trajectories)
