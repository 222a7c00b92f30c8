"""Rollout routing replay on the learner (learner/routing.py): two copies of the tiny Kimi-VL whose MoE
routers disagree only through ``e_score_correction_bias`` (it steers which experts are chosen, not their
gate weights), one standing for the rollout engine, one for the learner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kimivl import KimiVLForConditionalGeneration
from learner.logprobs import response_logprobs
from learner.routing import RoutingReplay, collate_routes, moe_routers


@pytest.fixture(scope="module")
def pair(tiny_dir):
    rollout = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    learner = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    for router in moe_routers(learner):
        bias = torch.zeros_like(router.e_score_correction_bias)
        bias[:2] = 1.0  # sigmoid scores lie in (0, 1): experts 0 and 1 now win every selection
        router.e_score_correction_bias.copy_(bias)
    return rollout, learner


def tokens(seed: int) -> tuple[list[int], list[int]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 900, (40,), generator=g).tolist()
    return ids[:16], ids[16:]


def recorded(model, prompt, response) -> np.ndarray:
    """(positions, moe_layers, k) the experts ``model`` routes each token of prompt + response to."""
    replay = RoutingReplay(model)
    try:
        with replay.record() as layers, torch.no_grad():
            response_logprobs(model, prompt, response)
    finally:
        replay.remove()
    return torch.stack(layers, dim=1).numpy()


def test_replay_routes_the_learner_as_the_rollout_and_aligns_their_logprobs(pair):
    rollout, learner = pair
    prompt, response = tokens(0)
    routes = recorded(rollout, prompt, response)
    assert routes.shape == (40, len(moe_routers(learner)), 2)
    with torch.no_grad():
        theirs = response_logprobs(rollout, prompt, response)
        off = response_logprobs(learner, prompt, response)
    replay = RoutingReplay(learner)
    try:
        # without replay: the learner's own choices differ from the rollout's, and so do the log-probs
        with replay.active(torch.from_numpy(routes), replay=False), torch.no_grad():
            response_logprobs(learner, prompt, response)
        differ = replay.disagreement()
        assert min(differ) > 0.3, differ
        assert (off - theirs).abs().max() > 1e-2
        # with replay: every token goes to the rollout's experts, and the log-probs agree
        with replay.active(torch.from_numpy(routes)), replay.record() as layers, torch.no_grad():
            on = response_logprobs(learner, prompt, response)
        used = torch.stack(layers, dim=1).numpy()
        assert (np.sort(used, axis=-1) == np.sort(routes, axis=-1)).all()
        assert (on - theirs).abs().max() <= 1e-5
    finally:
        replay.remove()


def test_replayed_gates_come_from_the_learners_router_so_it_still_learns(pair):
    rollout, learner = pair
    prompt, response = tokens(1)
    routes = torch.from_numpy(recorded(rollout, prompt, response))
    replay = RoutingReplay(learner)
    try:
        learner.zero_grad()
        with replay.active(routes):
            response_logprobs(learner, prompt, response).sum().backward()
        for router in moe_routers(learner):
            assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    finally:
        replay.remove()
        learner.zero_grad()


def test_missing_routes_keep_the_routers_own_choice(pair):
    _, learner = pair
    prompt, response = tokens(2)
    own = recorded(learner, prompt, response)
    routes = np.full_like(own, -1)
    routes[:5] = (own[:5] + 1) % 4  # another expert set for the first 5 positions only
    replay = RoutingReplay(learner)
    try:
        with replay.active(torch.from_numpy(routes)), replay.record() as layers, torch.no_grad():
            response_logprobs(learner, prompt, response)
    finally:
        replay.remove()
    used = torch.stack(layers, dim=1).numpy()
    assert (used[:5] == routes[:5]).all() and (used[5:] == own[5:]).all()


def test_collated_routes_follow_the_padded_rows():
    a = np.arange(6, dtype=np.uint8).reshape(3, 1, 2)  # 3 positions, 1 layer, top-2
    out = collate_routes([a, None], width=4)
    assert out.shape == (8, 1, 2)
    assert out[:3].tolist() == a.astype(np.int64).tolist() and (out[3:] == -1).all()
    assert collate_routes([None, None], width=4) is None
