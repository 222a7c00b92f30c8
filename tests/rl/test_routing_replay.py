"""Routing replay and the mismatch monitor end to end (`kvrl rl` on the tiny model, Ray, vLLM and
DeepSpeed): a bf16 rollout engine against the fp32 learners, the engines recording every token's experts,
the learners replaying them, TIS on top, and partial rollouts, so a response's routing is recorded
segment by segment over iterations and merged, and a resume in the middle, so the segments sampled
before it come back from the checkpoint with their routing. The learners' log-probs are then closer to
the engines' with replay than without it, measured on the same batch."""

from __future__ import annotations

import json

import pytest

from kimivl.routes import NOT_ROUTED, routes_from_state
from tests.helpers import kvrl_rl


@pytest.mark.slow
def test_a_bf16_rollout_with_routing_replay_over_partial_rollouts_and_a_resume(tiny_dir, tmp_path):
    run = tmp_path / "run"
    settings = [
        # the tiny config's own sizes (8 prompts x 4 samples x 48 tokens): about 1 token in 140 routes
        # differently, so a smaller batch could hold none
        "trainer.prompts_per_iteration=8",
        "rollout.sampling.n=4",
        "rollout.sampling.max_tokens=48",
        # 16 tokens a segment: a 48-token response is sampled over 3 iterations, its routes merged
        "rollout.partial.enabled=true",
        "rollout.partial.segment_tokens=16",
        "rollout.dtype=bfloat16",
        "trainer.routing_replay=true",
        "trainer.off_policy_correction=tis",
    ]
    kvrl_rl(tiny_dir, run, "trainer.iterations=2", *settings)
    # the checkpoint holds each response still being sampled with the routing of every token it computed
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    carried = json.loads((ckpt / "trainer_state.json").read_text())["partial"]
    assert carried
    for t in carried:
        routes = routes_from_state(t["routes"])
        assert routes.shape[0] == len(t["prompt_ids"]) + len(t["response_ids"])
        assert (routes[:-1] != NOT_ROUTED).all()  # the last token is not yet an input
    # the third iteration in a new process: responses begun before the checkpoint are finished after it
    rows = kvrl_rl(tiny_dir, run, "trainer.iterations=3", f"trainer.resume={run}", *settings)
    learned = [r for r in rows if "mismatch_kl" in r]
    assert [r["iteration"] for r in rows] == [0, 1, 2] and rows[-1] in learned
    for r in learned:
        assert r["mismatch_stale_token_share"] > 0.3, r  # segments sampled in earlier iterations
        # the bf16 engine routes some tokens to other experts than the fp32 learner would
        assert 0 < r["routing_disagreement/layer_0"] < 0.2, r
        # with the engine's experts replayed, old segments' included, the learner's log-probs are nearer
        # the engine's: misplaced routes would push them apart instead
        assert 0 < r["mismatch_kl"] < r["mismatch_kl_replay_off"] / 2, r
        # TIS weights: bf16 against fp32 moves token ratios a little, around 1
        assert abs(r["offpolicy_weight_mean"] - 1) < 0.05 and r["offpolicy_truncated_share"] < 0.01, r
