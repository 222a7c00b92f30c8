"""Routing replay's rollout side (rollout/routing.py) on a real vLLM engine, and the replay end to end.

The engine serves a copy of the tiny model whose MoE routers differ from the learner's only in
``e_score_correction_bias`` (it steers which experts are chosen, not their gate values), fp32 on both
sides. The experts the engine routed every token to, recorded per request and position, are the ones a
transformers model with the engine's weights chooses; the learner, with its own routers, chooses others
and its log-probs of the engine's responses differ; with the recorded routes replayed they agree with the
engine's within the fp32 parity bound (1e-3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kimivl.routes import NOT_ROUTED
from tests.helpers import gradient_image


def biased_copy(tiny_dir, out):
    """The tiny model's files with experts 0 and 1 made to win every selection (sigmoid scores lie in
    (0, 1), so a bias of 1 outranks any unbiased expert): the rollout side's routers."""
    import shutil

    from kimivl import KimiVLForConditionalGeneration
    from learner.routing import moe_routers

    shutil.copytree(tiny_dir, out)
    model = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32)
    with torch.no_grad():
        for router in moe_routers(model):
            router.e_score_correction_bias[:2] = 1.0
    model.save_pretrained(out)
    return out


def learner_pass(model, processor, prompt: str, images, sample, routes=None):
    """``model``'s log-probs of the sample's response and the experts it routed prompt + response to,
    (positions, moe_layers, k); with ``routes`` those replayed."""
    from learner.logprobs import response_logprobs
    from learner.routing import RoutingReplay, collate_routes

    enc = processor(text=prompt, images=images or None, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == sample.prompt_token_ids
    replay = RoutingReplay(model)
    given = None if routes is None else collate_routes([routes], len(routes))  # as the learner collates
    try:
        with replay.active(given), replay.record() as layers, torch.no_grad():
            logprobs = response_logprobs(
                model,
                sample.prompt_token_ids,
                sample.response_token_ids,
                enc.get("pixel_values"),
                enc.get("image_grid_hws"),
            )
    finally:
        replay.remove()
    return logprobs, torch.stack(layers, dim=1).numpy()


def assert_same_experts(recorded: np.ndarray, own: np.ndarray) -> None:
    """Every position but the last recorded (the last token is an input only when it was a draft the
    engine verified), each with the learner's expert sets."""
    assert recorded.shape == own.shape and recorded.dtype == np.uint8
    assert (recorded[:-1] != NOT_ROUTED).all()
    have = (recorded != NOT_ROUTED).all(axis=(1, 2))
    same = np.sort(recorded[have], axis=-1) == np.sort(own[have], axis=-1)
    assert same.all(), f"{(~same.all(axis=-1)).sum()} of {same.shape[0] * same.shape[1]} token-layers differ"


@pytest.mark.slow
def test_the_engine_records_each_tokens_experts_and_replaying_them_aligns_the_learner(tiny_dir, tmp_path):
    from kimivl import KimiVLForConditionalGeneration
    from rollout.engine import EngineConfig
    from rollout.prompts import chat_prompt
    from rollout.worker import RolloutRequest, RolloutWorker, SamplingConfig

    engine_dir = biased_copy(tiny_dir, tmp_path / "engine")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        worker = RolloutWorker(
            EngineConfig(model=str(engine_dir), max_model_len=1024, max_num_seqs=8, record_routes=True)
        )
        try:
            image = gradient_image(90, 60, 7)
            requests = [
                RolloutRequest("img", chat_prompt(worker.processor, "What colour is this?", 1), [image], 1),
                RolloutRequest("txt", chat_prompt(worker.processor, "What is 12 + 30?", 0), [], 2),
            ]
            results = worker.generate(requests, SamplingConfig(n=2, max_tokens=24))
            processor = worker.processor
            text = worker.llm.llm_engine.vllm_config.model_config.hf_config.text_config
            assert text.moe_router_dtype == "float32"  # rollout.router_dtype's default reached vLLM
        finally:
            worker.shutdown()
    twin = KimiVLForConditionalGeneration.from_pretrained(engine_dir, dtype=torch.float32).eval()
    learner = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    for request, result in zip(requests, results, strict=True):
        for sample in result.samples:
            length = len(sample.prompt_token_ids) + len(sample.response_token_ids)
            assert sample.routes.shape[0] == length
            args = (processor, request.prompt, request.images, sample)
            engine = torch.tensor(sample.logprobs)
            # the engine recorded the experts its routers chose: the ones its weights choose in transformers
            _, chosen = learner_pass(twin, *args)
            assert_same_experts(sample.routes, chosen)
            # the learner's own routers choose others, and its log-probs are not the engine's
            own, mine = learner_pass(learner, *args)
            assert (np.sort(mine, axis=-1) != np.sort(chosen, axis=-1)).any(axis=-1).mean() > 0.3
            assert (own - engine).abs().max() > 1e-2
            # replayed, the learner routes every token as the engine did, and the log-probs agree
            replayed, used = learner_pass(learner, *args, routes=sample.routes)
            assert_same_experts(sample.routes, used)
            assert (replayed - engine).abs().max() <= 1e-3


def spy_on_writes(worker) -> dict[str, list[tuple[int, int]]]:
    """Per request key, each step's write into the engine's route record: (first position, rows)."""
    from collections import defaultdict

    recorder = worker.llm.collective_rpc(lambda w: w._kvrl_routes)[0]  # in-process: the object itself
    writes: dict[str, list[tuple[int, int]]] = defaultdict(list)
    end = recorder._end

    def spying_end():
        step = recorder._step
        if step and len(step["ids"]) == len(recorder.slots):
            for i, key in enumerate(step["requests"]):
                rows = int(step["starts"][i + 1] - step["starts"][i])
                writes[key].append((int(step["computed"][i]), rows))
        end()

    recorder._end = spying_end
    return writes


@pytest.mark.slow
def test_a_preempted_request_keeps_the_routes_of_the_tokens_it_recomputes(tiny_dir):
    """A preempted request gives up its KV blocks and is later recomputed from position 0, prompt and
    response so far: the recorder writes the same routes over those positions, and every position ends
    with the experts the learner's model chooses for it. The engine is made to preempt: KV blocks for
    about two of its four sequences."""
    from kimivl import KimiVLForConditionalGeneration
    from rollout.engine import EngineConfig
    from rollout.prompts import chat_prompt
    from rollout.worker import RolloutRequest, RolloutWorker, SamplingConfig

    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        config = EngineConfig(
            model=str(tiny_dir),
            max_model_len=160,
            max_num_seqs=4,
            record_routes=True,
            extra={"block_size": 16, "num_gpu_blocks_override": 12, "disable_log_stats": False},
        )
        worker = RolloutWorker(config)
        try:
            writes = spy_on_writes(worker)
            words = "Count the letters of every word in this sentence and add them up, then double it"
            prompts = [chat_prompt(worker.processor, f"{words} {i}.") for i in range(2)]
            requests = [RolloutRequest(f"q{i}", p, [], i) for i, p in enumerate(prompts)]
            results = worker.generate(requests, SamplingConfig(n=2, max_tokens=96))
            processor = worker.processor
            preempted = sum(m.value for m in worker.llm.get_metrics() if m.name == "vllm:num_preemptions")
        finally:
            worker.shutdown()
    # recomputed: a request written from position 0 again, over more than its prompt
    recomputed = [w for w in writes.values() if any(first == 0 and n > w[0][1] for first, n in w[1:])]
    assert preempted > 0 and recomputed, (preempted, dict(writes))
    learner = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    for request, result in zip(requests, results, strict=True):
        for sample in result.samples:
            assert sample.routes.shape[0] == len(sample.prompt_token_ids) + len(sample.response_token_ids)
            _, own = learner_pass(learner, processor, request.prompt, [], sample)
            assert_same_experts(sample.routes, own)


def drive(recorder, steps) -> None:
    """Feed ``recorder`` engine steps in the layout vLLM's model runner gives it: per step, the
    scheduled requests as (vLLM request id, tokens computed before this step, rows this step). Each
    row's experts are a function of its position, so a row written to the wrong position shows."""
    from types import SimpleNamespace

    for step in steps:
        ids = [r for r, _, _ in step]
        computed = np.array([c for _, c, _ in step])
        starts = np.concatenate([[0], np.cumsum([n for _, _, n in step])])
        recorder.runner.input_batch = SimpleNamespace(
            num_reqs=len(step), req_ids=ids, num_computed_tokens_cpu=computed
        )
        recorder.runner.query_start_loc = SimpleNamespace(np=starts)
        positions = np.concatenate([np.arange(c, c + n) for _, c, n in step])
        recorder._begin()
        for layer in recorder.slots.values():
            recorder._capture(layer, torch.from_numpy(expected_experts(positions, layer)))
        recorder._end()


def expected_experts(positions: np.ndarray, layer: int) -> np.ndarray:
    first = (positions * 3 + layer) % 7
    return np.stack([first, first + 7], axis=-1).astype(np.int64)  # top-2 of 14 experts


def test_chunked_prefill_and_a_prefix_cache_hit_map_rows_to_positions():
    """vLLM's CPU build turns chunked prefill and prefix caching off for MLA (``platforms/cpu.py``), so
    no engine here can do either; their mapping is tested by driving the recorder with the step layout
    the model runner gives on GPU: a prompt prefilled in chunks, sharing steps with other requests, and
    a request whose first 8 tokens the engine found in its prefix cache (no rows: NOT_ROUTED, the learner
    routes them itself)."""
    from types import SimpleNamespace

    from rollout.routing import RouteRecorder

    recorder = RouteRecorder.__new__(RouteRecorder)  # the bookkeeping only: no engine to hook into
    recorder.runner, recorder.slots, recorder.top_k, recorder.rows, recorder._step = (
        SimpleNamespace(),
        {3: 0, 5: 1},
        0,
        {},
        None,
    )
    drive(
        recorder,
        [
            [("a-0", 0, 6)],  # a's 10-token prompt, chunk 1 of 2
            [("a-0", 6, 4), ("b-0", 0, 2)],  # chunk 2, beside b's first chunk
            [("a-0", 10, 1), ("b-0", 2, 3), ("c-0", 8, 4)],  # a decodes; c's 8 cached tokens: no rows
            [("a-0", 11, 1), ("c-0", 12, 1)],
        ],
    )
    routes = recorder.take({"a": 13, "b": 5, "c": 14})
    for key, routed in (("a", 12), ("b", 5), ("c", 13)):
        r = routes[key]
        assert r.shape == ({"a": 13, "b": 5, "c": 14}[key], 2, 2) and r.dtype == np.uint8
        have = np.arange(8 if key == "c" else 0, routed)
        for layer in range(2):
            assert (r[have, layer] == expected_experts(have, layer)).all(), key
        assert (r[routed:] == NOT_ROUTED).all()
    assert (routes["c"][:8] == NOT_ROUTED).all()  # the cached prefix
    assert recorder.rows == {}  # taken requests are forgotten
