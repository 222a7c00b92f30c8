"""The base of RL correctness: vLLM's sampled-token log-probs equal the learner's teacher-forced ones."""

from __future__ import annotations

import logging

import pytest
import torch
from vllm import SamplingParams

from kimivl import KimiVLForConditionalGeneration, KimiVLProcessor
from learner.logprobs import response_logprobs
from rollout.engine import to_samples
from rollout.inputs import make_request
from tests.helpers import gradient_image

log = logging.getLogger(__name__)

TOLERANCE = 1e-3  # fp32, max abs difference per token
MIN_TOKENS = 64


def chat(processor, text: str, num_images: int) -> str:
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


@pytest.fixture(scope="module")
def learner(tiny_dir):
    return KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()


def test_vllm_logprobs_match_learner(tiny_dir, llm, learner, record_property):
    processor = KimiVLProcessor.from_pretrained(tiny_dir)
    # Images of different sizes: one needs padding to 28 px, one is tall, one goes over the
    # tiny checkpoint's in_token_limit (256 patches) and is downscaled.
    prompts = [
        (chat(processor, "What is 12 + 30?", 2), [gradient_image(100, 60, 1), gradient_image(30, 200, 2)]),
        (chat(processor, "Count the shapes.", 1), [gradient_image(300, 260, 3)]),
        (chat(processor, "What is 7 * 6?", 0), []),
    ]
    requests = [make_request(p, ims) for p, ims in prompts]
    params = SamplingParams(temperature=1.0, max_tokens=MIN_TOKENS, min_tokens=MIN_TOKENS, logprobs=0, seed=3)
    outputs = to_samples(llm.generate(requests, params, use_tqdm=False))

    worst = 0.0
    for (prompt, images), (sample,) in zip(prompts, outputs, strict=True):
        assert len(sample.response_token_ids) >= MIN_TOKENS
        enc = processor(text=prompt, images=images or None, return_tensors="pt")
        assert enc["input_ids"][0].tolist() == sample.prompt_token_ids, (
            "processor and vLLM disagree on prompt ids"
        )
        with torch.no_grad():
            ours = response_logprobs(
                learner,
                sample.prompt_token_ids,
                sample.response_token_ids,
                enc.get("pixel_values"),
                enc.get("image_grid_hws"),
            )
        diff = (ours - torch.tensor(sample.logprobs)).abs().max().item()
        worst = max(worst, diff)
    log.info("parity: max |logp_vllm - logp_learner| = %.3g over %d prompts", worst, len(prompts))
    record_property("parity_max_abs_diff", worst)
    print(f"\nPARITY max abs diff = {worst:.3g}")
    assert worst <= TOLERANCE


def test_parity_detects_a_different_model(tiny_dir, llm, learner):
    """The comparison has teeth: perturbing one learner weight breaks it."""
    processor = KimiVLProcessor.from_pretrained(tiny_dir)
    prompt = chat(processor, "What is 1 + 1?", 1)
    image = gradient_image(64, 64, 5)
    params = SamplingParams(temperature=1.0, max_tokens=16, min_tokens=16, logprobs=0, seed=4)
    ((sample,),) = to_samples(llm.generate([make_request(prompt, [image])], params, use_tqdm=False))
    enc = processor(text=prompt, images=[image], return_tensors="pt")
    changed = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        changed.multi_modal_projector.linear_2.weight.mul_(3.0)
        ours = response_logprobs(
            changed,
            sample.prompt_token_ids,
            sample.response_token_ids,
            enc["pixel_values"],
            enc["image_grid_hws"],
        )
    assert (ours - torch.tensor(sample.logprobs)).abs().max().item() > 10 * TOLERANCE
