"""``kvrl bench rollout``: kvrl's rollout actors (vLLM engines on Ray) against transformers ``generate``.

The same tiny Kimi-VL checkpoint, the same image+text prompts, n samples each, the same max tokens and
temperature. The baseline is what an RL loop without an inference engine does: the policy's own HF model
samples the n responses of a prompt as one batch. Reported: generated tokens per second, both sides.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from actors.placement import ResourceConfig, place, start_ray
from actors.rollout import RolloutPool
from kimivl import KimiVLForConditionalGeneration, KimiVLProcessor
from kimivl.tiny import make_tiny
from rollout.engine import EngineConfig
from rollout.prompts import chat_prompt
from rollout.worker import RolloutRequest, SamplingConfig

from .common import result, timed

log = logging.getLogger(__name__)
IMAGES = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "data" / "images"


def prompts(processor, count: int) -> list[tuple[str, str, list]]:
    """(id, prompt, images): every other prompt carries one of the tiny data's images."""
    from PIL import Image

    pictures = [Image.open(p).convert("RGB") for p in sorted(IMAGES.glob("*.png"))]
    out = []
    for i in range(count):
        images = [pictures[i // 2 % len(pictures)]] if i % 2 == 0 else []
        question = (
            f"What is {i} + {2 * i}? Look at the picture first." if images else f"What is {i} + {2 * i}?"
        )
        out.append((f"q{i}", chat_prompt(processor, question, len(images)), images))
    return out


def run(
    quick: bool = False,
    repeats: int = 3,
    model: str | None = None,
    engines: int = 2,
    n: int = 4,
    max_tokens: int = 64,
) -> list[dict]:

    model = model or str(make_tiny(Path(tempfile.mkdtemp(prefix="kvrl-bench-rollout-")) / "tiny"))
    processor = KimiVLProcessor.from_pretrained(model)
    batch = prompts(processor, 8 if quick else 32)
    kvrl_runs, kvrl_tokens = _kvrl(model, batch, repeats, engines, n, max_tokens)
    hf_runs, hf_tokens = _hf_generate(model, processor, batch, repeats, n, max_tokens)
    return [
        result(
            "rollout",
            kvrl_runs,
            hf_runs,
            "tokens/s",
            higher_is_better=True,
            size=f"{len(batch)} prompts x {n} samples x {max_tokens} tokens",
            prompts=len(batch),
            samples_per_prompt=n,
            max_tokens=max_tokens,
            engines=engines,
            kvrl_tokens=kvrl_tokens,
            baseline_tokens=hf_tokens,
            baseline_description="transformers generate on the same model, one batch of n samples per prompt",
            model=model,
        )
    ]


def _kvrl(model, batch, repeats, engines, n, max_tokens) -> tuple[list[float], list[int]]:
    import ray

    started = not ray.is_initialized()
    if started:
        start_ray(ResourceConfig(rollout_actors=engines, learner_ranks=1))
    placement = place(ResourceConfig(rollout_actors=engines, learner_ranks=1))
    sampling = SamplingConfig(n=n, max_tokens=max_tokens, temperature=1.0)
    runs, tokens = [], []
    try:
        per_engine = -(-len(batch) // engines)  # one chunk per engine: it batches all its prompts
        engine = EngineConfig(model=model, max_model_len=1024, max_num_seqs=256)
        pool = RolloutPool(engine, engines, placement.rollout, chunk_size=per_engine)
        requests = [RolloutRequest(i, p, imgs, seed=k) for k, (i, p, imgs) in enumerate(batch)]
        pool.generate(requests, sampling)  # warm-up: the first batch of a size is slower (allocation)
        for _ in range(repeats):
            seconds, results = timed(lambda: pool.generate(requests, sampling))
            count = sum(len(s.response_token_ids) for r in results for s in r.samples)
            runs.append(count / seconds)
            tokens.append(count)
        pool.shutdown()
    finally:
        placement.remove()
        if started:
            ray.shutdown()
    return runs, tokens


def _hf_generate(model, processor, batch, repeats, n, max_tokens) -> tuple[list[float], list[int]]:
    import torch

    policy = KimiVLForConditionalGeneration.from_pretrained(model, dtype=torch.float32).eval()
    stop = set(policy.generation_config.eos_token_id or [])
    pad = processor.tokenizer.pad_token_id

    def one_pass(items=batch) -> int:
        count = 0
        for _, prompt, images in items:
            enc = processor(text=[prompt] * n, images=images * n or None, return_tensors="pt")
            with torch.no_grad():
                out = policy.generate(
                    **enc,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    max_new_tokens=max_tokens,
                    pad_token_id=pad,
                )
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                # generated tokens up to and including the first stop token (the rest is padding)
                ends = [k for k, t in enumerate(row) if t in stop]
                count += ends[0] + 1 if ends else len(row)
        return count

    one_pass()  # warm-up, as on the kvrl side
    runs, tokens = [], []
    for _ in range(repeats):
        seconds, count = timed(one_pass)
        runs.append(count / seconds)
        tokens.append(count)
    return runs, tokens
