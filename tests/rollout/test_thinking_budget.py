"""Thinking budget in the rollout worker: forced ◁/think▷, the answer after it, and log-probs that still
match the learner on every sampled token (the continuation re-sends the prompt with its images)."""

from __future__ import annotations

import pytest
import torch

from kimivl import KimiVLForConditionalGeneration
from learner.logprobs import response_logprobs
from rollout.prompts import chat_prompt
from rollout.worker import RolloutRequest, SamplingConfig
from tests.helpers import gradient_image


@pytest.mark.slow
def test_budget_forces_close_then_answers(worker, tiny_dir):
    image = gradient_image(50, 40, 3)
    thinking = chat_prompt(worker.processor, "What is 3 + 4?", 1) + "◁think▷"  # the model is mid-thought
    plain = chat_prompt(worker.processor, "Say something.", 0)
    sampling = SamplingConfig(n=2, max_tokens=24, thinking_budget=6, answer_tokens=5, temperature=1.0)
    think_res, plain_res = worker.generate(
        [RolloutRequest("t", thinking, [image], seed=1), RolloutRequest("p", plain, [], seed=2)], sampling
    )
    close = worker.think_close
    for s in think_res.samples:
        assert s.forced == [6] and s.response_token_ids[6] == close  # budget of 6, then the forced close
        assert 7 < len(s.response_token_ids) <= 6 + 1 + 5 and len(s.logprobs) == len(s.response_token_ids)
    assert max(len(s.response_token_ids) for s in plain_res.samples) > 6  # not thinking: the window is no cut
    assert all(not s.forced for s in plain_res.samples)

    learner = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    enc = worker.processor.image_processor([image])
    for s in think_res.samples:
        with torch.no_grad():
            ours = response_logprobs(
                learner, s.prompt_token_ids, s.response_token_ids, enc["pixel_values"], enc["image_grid_hws"]
            )
        sampled = [i for i in range(len(s.response_token_ids)) if i not in s.forced]
        gap = (ours[sampled] - torch.tensor(s.logprobs)[sampled]).abs().max().item()
        assert gap <= 1e-3, gap


@pytest.mark.slow
def test_each_answer_phase_samples_from_a_stream_of_its_own(worker, monkeypatch):
    seeds: list[int] = []
    add_request = worker.llm.llm_engine.add_request

    def spy(key, prompt, params, *args, **kwargs):
        seeds.append(params.seed)
        return add_request(key, prompt, params, *args, **kwargs)

    monkeypatch.setattr(worker.llm.llm_engine, "add_request", spy)
    thinking = chat_prompt(worker.processor, "What is 1 + 1?", 0) + "◁think▷"
    sampling = SamplingConfig(n=4, max_tokens=16, thinking_budget=3, answer_tokens=3)
    (result,) = worker.generate([RolloutRequest("q", thinking, [], seed=40)], sampling)
    # sample j of the first phase is its own request, seeded 40 + j as vLLM seeds an n-sample request
    assert seeds[:4] == [40, 41, 42, 43] and all(s.forced == [3] for s in result.samples)
    # no answer phase may reuse one of those streams
    first_phase = {40 + j for j in range(4)}
    answers = seeds[4:]
    assert len(answers) == 4 and len(set(answers)) == 4 and not first_phase & set(answers), answers
