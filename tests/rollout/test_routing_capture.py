"""Routing replay's rollout side (rollout/routing.py) on a real vLLM engine: the experts the engine
routed every token to, recorded per request and position, are the ones the learner's transformers model
chooses for the same tokens (fp32 on both sides, so the two routers agree)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kimivl.routes import NOT_ROUTED
from tests.helpers import gradient_image


def learner_routes(learner, processor, prompt: str, images, sample) -> np.ndarray:
    """(positions, moe_layers, k) the learner's own routing of prompt + response."""
    from learner.logprobs import response_logprobs
    from learner.routing import RoutingReplay

    enc = processor(text=prompt, images=images or None, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == sample.prompt_token_ids
    replay = RoutingReplay(learner)
    try:
        with replay.record() as layers, torch.no_grad():
            response_logprobs(
                learner,
                sample.prompt_token_ids,
                sample.response_token_ids,
                enc.get("pixel_values"),
                enc.get("image_grid_hws"),
            )
    finally:
        replay.remove()
    return torch.stack(layers, dim=1).numpy()


def assert_same_experts(recorded: np.ndarray, own: np.ndarray) -> None:
    """Every position but the last recorded (the last token is an input only when it was a draft the
    engine verified), each with the learner's expert sets."""
    assert recorded.shape == own.shape and recorded.dtype == np.uint8
    assert (recorded[:-1] != NOT_ROUTED).all()
    have = (recorded != NOT_ROUTED).all(axis=(1, 2))
    same = np.sort(recorded[have], axis=-1) == np.sort(own[have], axis=-1)
    assert same.all(), f"{(~same.all(axis=-1)).sum()} of {same.shape[0] * same.shape[1]} token-layers differ"


@pytest.mark.slow
def test_the_engine_records_each_tokens_experts_images_included(tiny_dir):
    from kimivl import KimiVLForConditionalGeneration
    from rollout.engine import EngineConfig
    from rollout.prompts import chat_prompt
    from rollout.worker import RolloutRequest, RolloutWorker, SamplingConfig

    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        worker = RolloutWorker(
            EngineConfig(model=str(tiny_dir), max_model_len=1024, max_num_seqs=8, record_routes=True)
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
    learner = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    for request, result in zip(requests, results, strict=True):
        for sample in result.samples:
            length = len(sample.prompt_token_ids) + len(sample.response_token_ids)
            assert sample.routes.shape[0] == length
            assert_same_experts(sample.routes, learner_routes(learner, processor, request.prompt,
                                                              request.images, sample))  # fmt: skip
