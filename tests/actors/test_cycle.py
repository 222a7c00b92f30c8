"""One full sample -> score -> learn -> sync cycle on Ray: 2 rollout actors, 2 learner ranks, reward pool.
The sync after learning is streamed (actors/stream.py); today's full-state path with the same weights
then makes the engines sample exactly what they sampled after the stream."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import ray
import torch
from safetensors.torch import load_file

from actors.learner import LearnerGroup
from actors.placement import ClusterTooSmall, ResourceConfig, check_fits, place
from actors.reward import RewardActor
from actors.rollout import ACTOR_FAILURES, RolloutPool
from actors.stream import WeightStream
from kimivl import KimiVLProcessor
from learner.experience import Experience
from learner.rank import LearnerConfig
from rewards import RewardConfig, Task
from rl.losses import assign_advantages, get_loss
from rollout.engine import EngineConfig
from rollout.prompts import chat_prompt
from rollout.worker import RolloutRequest, SamplingConfig
from tests.helpers import gradient_image

log = logging.getLogger(__name__)
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def placement(ray_cluster):
    p = place(
        ResourceConfig(rollout_actors=2, learner_ranks=2, rollout_cpus=1, learner_cpus=1, reward_cpus=1)
    )
    yield p
    p.remove()


@pytest.fixture(scope="module")
def pool(tiny_dir, placement):
    p = RolloutPool(
        EngineConfig(model=str(tiny_dir), max_model_len=512, max_num_seqs=16, weight_stream=True),
        2,
        placement.rollout,
        chunk_size=2,
    )
    yield p
    p.shutdown()


@pytest.fixture(scope="module")
def reward_actor(placement):
    actor = RewardActor.options(**placement.reward).remote(
        RewardConfig(verifier="kvrl_cycle_plugin:even_length", workers=1, timeout_s=10)
    )
    yield actor
    ray.kill(actor)


def make_requests(tiny_dir, count: int, prefix: str = "p") -> list[RolloutRequest]:
    processor = KimiVLProcessor.from_pretrained(tiny_dir)
    out = []
    for i in range(count):
        images = [gradient_image(40 + 10 * i, 30, i)] if i % 2 == 0 else []
        prompt = chat_prompt(processor, f"What is {i} + {i}?", len(images))
        out.append(RolloutRequest(f"{prefix}{i}", prompt, images, seed=100 + i))
    return out


def experiences(tiny_dir, requests, results, rewards=None) -> list[Experience]:
    ip = KimiVLProcessor.from_pretrained(tiny_dir).image_processor
    out, k = [], 0
    for g, (req, res) in enumerate(zip(requests, results, strict=True)):
        enc = ip(req.images) if req.images else {}
        for s in res.samples:
            out.append(
                Experience(
                    s.prompt_token_ids,
                    s.response_token_ids,
                    reward=rewards[k] if rewards else 0.0,
                    group_id=g,
                    old_logprobs=s.logprobs,
                    pixel_values=enc.get("pixel_values"),
                    image_grid_hws=enc.get("image_grid_hws"),
                )
            )
            k += 1
    return out


def max_gap(learner_lps, samples) -> float:
    return max(
        (torch.tensor(lp) - torch.tensor(s.old_logprobs)).abs().max().item()
        for lp, s in zip(learner_lps, samples, strict=True)
    )


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_sample_score_learn_sync(tiny_dir, placement, pool, reward_actor, zero_stage):
    # logits_chunk=5: the learner's log-probs (and their gradients) come from many chunks of the LM head.
    cfg = LearnerConfig(zero_stage=zero_stage, micro_batch_size=3, lr=3e-3, logits_chunk=5)
    group = LearnerGroup(str(tiny_dir), cfg, 2, placement.learner)
    try:
        sync_s = pool.update_weights(group.state_ref())  # start both sides from the same weights
        sampling = SamplingConfig(n=2, max_tokens=12, temperature=1.0)
        requests = make_requests(tiny_dir, 4)
        results = pool.generate(requests, sampling)
        tasks = [Task(s.text, "0", "kvrl_cycle_plugin:even_length") for r in results for s in r.samples]
        verdicts = ray.get(reward_actor.verify.remote(tasks))
        rewards = [float(v.correct) for v in verdicts]
        batch = experiences(tiny_dir, requests, results, rewards)
        assert max_gap(group.logprobs(batch), batch) <= TOLERANCE  # rollout and learner agree before learning
        assign_advantages(batch, get_loss("opmd"), {"tau": 0.5})
        metrics = {
            k: float(v) for k, v in group.train_step(batch, get_loss("opmd").bound({"tau": 0.5})).items()
        }
        assert metrics["skipped"] == 0.0 and all(v == v for v in metrics.values())  # no NaN

        after = experiences(tiny_dir, requests, pool.generate(requests, sampling))
        stale_gap = max_gap(group.logprobs(after), after)
        sync_s = pool.stream_weights(WeightStream(group, timeout_s=30))
        streamed = pool.generate(requests, sampling)
        fresh = experiences(tiny_dir, requests, streamed)
        gap = max_gap(group.logprobs(fresh), fresh)
        pool.update_weights(group.state_ref())  # the same weights the old way
        reloaded = pool.generate(requests, sampling)
        for a, b in zip(streamed, reloaded, strict=True):
            for x, y in zip(a.samples, b.samples, strict=True):
                assert x.response_token_ids == y.response_token_ids and x.logprobs == y.logprobs
        log.info("ZeRO-%d: stale gap %.3g, after sync %.3g, sync %s s", zero_stage, stale_gap, gap, sync_s)
        print(
            f"\nZeRO-{zero_stage}: learner vs rollout before sync {stale_gap:.3g}, after sync {gap:.3g}; "
            f"sync seconds per engine {[round(s, 4) for s in sync_s]}"
        )
        assert stale_gap > 10 * TOLERANCE, "the update should have changed the policy"
        assert gap <= TOLERANCE
    finally:
        group.shutdown()


@pytest.mark.slow
@pytest.mark.fault
def test_killed_rollout_actor_loses_no_prompt(tiny_dir, pool):
    requests = make_requests(tiny_dir, 12, prefix="k")
    sampling = SamplingConfig(n=2, max_tokens=48)
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("results", pool.generate(requests, sampling)))
    thread.start()
    deadline = time.time() + 60
    while pool.inflight == 0 and time.time() < deadline:
        time.sleep(0.01)
    replaced_before = pool.replaced
    ray.kill(pool.actors[0])
    thread.join(timeout=600)
    results = box["results"]
    ids = [r.request_id for r in results]
    assert sorted(ids) == sorted(r.request_id for r in requests) and len(set(ids)) == len(ids)
    assert all(len(r.samples) == 2 for r in results)
    assert pool.replaced == replaced_before + 1


@pytest.mark.slow
@pytest.mark.fault
def test_rollout_actor_dead_between_batches_is_replaced_at_the_next_sync(tiny_dir, pool):
    # An engine may die idle, its batch already returned (one sampling ahead in a pipelined run does):
    # the weight sync that meets it replaces it and loads the new weights there instead of stopping.
    state = {}
    for file in sorted(tiny_dir.glob("*.safetensors")):
        state.update(load_file(file))
    ray.kill(pool.actors[1])
    deadline = time.time() + 60
    with pytest.raises(ACTOR_FAILURES):  # ray.kill is asynchronous: dead before the sync starts
        while time.time() < deadline:
            ray.get(pool.actors[1].weights_version.remote(), timeout=60)
            time.sleep(0.05)
    replaced_before = pool.replaced
    seconds = pool.update_weights(ray.put(state))
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
    assert pool.replaced == replaced_before + 1
    assert ray.get([a.weights_version.remote() for a in pool.actors]) == [pool.version] * 2
    results = pool.generate(make_requests(tiny_dir, 4, prefix="r"), SamplingConfig(n=1, max_tokens=4))
    assert [len(r.samples) for r in results] == [1] * 4


@pytest.mark.slow
@pytest.mark.fault
def test_an_engine_killed_mid_stream_is_replaced_and_loaded(tiny_dir, placement, pool):
    # 1 KiB units: a sync of the tiny model is thousands of broadcasts, long enough to kill into
    cfg = LearnerConfig(zero_stage=2, sync_bucket_mb=1 / 1024)
    group = LearnerGroup(str(tiny_dir), cfg, 2, placement.learner)
    try:
        stream = WeightStream(group, timeout_s=10)
        pool.stream_weights(stream)  # forms the group
        took, _ = time.perf_counter(), pool.stream_weights(stream)
        took = time.perf_counter() - took
        replaced_before, box = pool.replaced, {}
        thread = threading.Thread(target=lambda: box.update(seconds=pool.stream_weights(stream)))
        thread.start()
        time.sleep(took / 3)
        ray.kill(pool.actors[1])
        thread.join(timeout=300)
        # the survivor's broadcasts stopped too: neither engine is trusted, both are replaced and
        # streamed to again, and the sync completes
        assert len(box["seconds"]) == 2 and pool.replaced >= replaced_before + 1
        assert ray.get([a.weights_version.remote() for a in pool.actors]) == [pool.version] * 2
        requests = make_requests(tiny_dir, 4, prefix="m")
        fresh = experiences(tiny_dir, requests, pool.generate(requests, SamplingConfig(n=1, max_tokens=8)))
        assert max_gap(group.logprobs(fresh), fresh) <= TOLERANCE
    finally:
        group.shutdown()


def test_config_that_cannot_fit_fails_fast():
    cfg = ResourceConfig(rollout_actors=2, rollout_gpus=1, learner_ranks=2, learner_gpus=1)
    with pytest.raises(ClusterTooSmall, match=r"need 4 GPU \(the cluster has 0\)"):
        check_fits(cfg, {"CPU": 16.0})
    with pytest.raises(ClusterTooSmall, match=r"need 5 CPU \(the cluster has 2\)"):
        check_fits(ResourceConfig(), {"CPU": 2.0})
