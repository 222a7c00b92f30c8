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


LOOPING = 100.0  # the tiny model's LM head scaled so: near-greedy, and every sample falls into a loop


@pytest.mark.slow
def test_a_looping_response_stops_at_its_repeat_in_the_synchronous_path(worker, tiny_dir):
    """Whole responses in one call (no divided rollout, no partial rollouts, every shipped config's
    path): a response stops at the token that completes a repeat, as a prefix of what the engine
    samples without the watch, with the same log-probs; nothing is forced into it."""
    from rollout.trajectory import REPEAT, RepeatConfig, repeated_period

    policy = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32)
    state = dict(policy.checkpoint_tensors())
    looping = {k: v * LOOPING if k.endswith("lm_head.weight") else v for k, v in state.items()}
    assert any(k.endswith("lm_head.weight") for k in state)
    request = RolloutRequest("loop@0", chat_prompt(worker.processor, "What is 2+3?", 0), seed=1)
    sampling, repeat = SamplingConfig(n=4, max_tokens=300), RepeatConfig(max_period=32, min_repeats=8)
    worker.update_weights(looping, version=1)
    try:
        free = worker.extend([Trajectory(request, j) for j in range(4)], sampling, None, 1)
        watched = worker.extend([Trajectory(request, j) for j in range(4)], sampling, None, 1, repeat)
        steps = worker.stats.steps
    finally:
        worker.update_weights(state, version=0)
    assert [t.finish_reason for t in free] == ["length"] * 4  # unwatched, each loops to max_tokens
    for f, w in zip(free, watched, strict=True):
        n = len(w.response_ids)
        assert w.finish_reason == REPEAT and n < sampling.max_tokens
        assert w.response_ids == f.response_ids[:n] and not w.forced  # only sampled tokens, cut
        assert max(abs(a - b) for a, b in zip(w.logprobs, f.logprobs, strict=False)) < TOLERANCE
        # cut at the first token that completes a repeat, not later
        assert repeated_period(w.response_ids, 32, 8) and not repeated_period(w.response_ids[:-1], 32, 8)
    assert steps < sampling.max_tokens  # the engine stopped early, it did not run on and trim
