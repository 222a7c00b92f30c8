"""Packed RL micro-batches (``learner.micro_batch_tokens``, ``learner/experience.py`` ``collate_row``):
responses laid end to end in one row, each attending only to itself, give the log-probs, the loss and
every gradient of right-padded micro-batches (1e-5), with images, routing replay and groups split across
micro-batches; and a learner rank packs its own micro-batches the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kimivl import KimiVLForConditionalGeneration, KimiVLProcessor
from learner.experience import Experience, by_length, collate, collate_row, micro_batches, pack_by_tokens
from learner.kernels import pin_kernels
from learner.logprobs import batch_logprobs
from learner.loss import LossInputs
from learner.rank import Learner, LearnerConfig
from learner.routing import RoutingReplay, moe_routers
from rl.losses import assign_advantages, get_loss
from tests.helpers import gradient_image

BUDGET = 160  # tokens a packed row holds: the 8 sequences (31-104 tokens) take 3 rows


def experiences(model_dir) -> list[Experience]:
    processor = KimiVLProcessor.from_pretrained(model_dir)
    ip, media = processor.image_processor, processor.tokenizer.convert_tokens_to_ids("<|media_pad|>")
    config = KimiVLForConditionalGeneration.config_class.from_pretrained(model_dir)
    layers, k = sum(1 for _ in range(config.text_config.first_k_dense_replace, 2)), 2
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    out = []
    for i, (p, r) in enumerate(
        [(12, 19), (20, 40), (9, 30), (30, 68), (15, 25), (11, 50), (25, 33), (8, 44)]
    ):
        prompt = torch.randint(10, 900, (p,), generator=g).tolist()
        pixels = hws = None
        if i in (1, 3):  # images: a 28x42 and a 56x28 one, their placeholders inside the prompt
            image = ip([gradient_image(28 + 28 * (i == 3), 42 - 14 * (i == 3), i)])
            pixels, hws = image["pixel_values"], image["image_grid_hws"]
            prompt[2:2] = [media] * ip.num_image_tokens(28 + 28 * (i == 3), 42 - 14 * (i == 3))
        response = torch.randint(10, 900, (r,), generator=g).tolist()
        routes = None
        if i % 2 == 0:  # recorded experts for every token (the last never routed: -1 stays)
            n = len(prompt) + len(response)
            routes = np.stack([rng.permutation(4)[:k] for _ in range(n * layers)]).reshape(n, layers, k)
        sample = Experience(prompt, response, reward=float(i % 3 == 0), group_id=i // 4, routes=routes)
        sample.pixel_values, sample.image_grid_hws = pixels, hws
        out.append(sample)
    assign_advantages(out, get_loss("opmd"), {"tau": 1.0})
    return out


def run_through(model, samples, batches, pack: bool) -> tuple[list[list[float]], float]:
    """Log-probs, then the OPMD loss's backward over ``batches`` (lists of indices), as a rank does."""
    head, replay = model.language_model.lm_head, RoutingReplay(model)
    loss_fn = get_loss("opmd").bound({"tau": 1.0})
    lps: list[list[float]] = [[] for _ in samples]
    total = 0.0
    try:
        for mb in batches:
            batch = (collate_row if pack else collate)([samples[i] for i in mb], pad_id=0)
            with replay.active(batch.routes):
                logprobs, _ = batch_logprobs(model, head, batch, logits_chunk=16)
                old = logprobs.detach() - 0.01 * batch.response_mask  # a moved policy: tau acts
                inputs = LossInputs(logprobs, old, batch.response_mask, batch.advantages)
                loss, _ = loss_fn(inputs, len(samples))
                loss.backward()
            total += float(loss)
            for b, i in enumerate(mb):
                lps[i] = logprobs[b, : len(samples[i].response_ids)].tolist()
    finally:
        replay.remove()
    return lps, total


def test_packed_rows_give_the_padded_logprobs_loss_and_gradients(tiny_dir):
    samples = experiences(tiny_dir)
    packed_batches = pack_by_tokens(samples, BUDGET)
    assert len(packed_batches) == 3 and sorted(i for b in packed_batches for i in b) == list(range(8))
    size = [sum(len(samples[i].prompt_ids) + len(samples[i].response_ids) for i in b) for b in packed_batches]
    assert max(size) <= BUDGET
    assert any(len({samples[i].group_id for i in b}) > 1 for b in packed_batches)  # groups split
    grads, results = {}, {}
    # padded rows; packed rows with a block-diagonal mask; packed rows attended one sequence at a time
    # (pin_kernels' packed attention), with gradient checkpointing, whose recompute must split alike
    for way in ("padded", "masked", "per_sequence"):
        model = KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32)
        assert moe_routers(model)
        if way == "per_sequence":
            pin_kernels(model, "cpu", packed=True)
            model.gradient_checkpointing_enable()
        pack = way != "padded"
        batches = packed_batches if pack else micro_batches(by_length(samples), 2)
        results[way] = run_through(model, samples, batches, pack)
        grads[way] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    padded_lps, padded_loss = results["padded"]
    for way in ("masked", "per_sequence"):
        packed_lps, packed_loss = results[way]
        for a, b in zip(padded_lps, packed_lps, strict=True):
            assert len(a) == len(b) > 0
            assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-5, way
        assert packed_loss == pytest.approx(padded_loss, abs=1e-5)
        assert grads[way].keys() == grads["padded"].keys()
        assert "vision_tower.encoder.blocks.0.wqkv.weight" in grads[way]  # the images took part
        for name, g in grads["padded"].items():
            torch.testing.assert_close(grads[way][name], g, rtol=1e-5, atol=1e-6, msg=f"{way} {name}")


def test_a_rank_packs_its_micro_batches_to_the_token_budget(tiny_dir, single_rank):
    samples = [s for s in experiences(tiny_dir) if s.pixel_values is None]
    for s in samples:
        s.routes = None
    learners = {
        tokens: Learner(
            str(tiny_dir), LearnerConfig(zero_stage=2, lr=1e-3, micro_batch_size=2, micro_batch_tokens=tokens)
        )
        for tokens in (0, BUDGET)
    }
    assert [learners[t].kernels["attention"] for t in (0, BUDGET)] == ["sdpa", "kvrl_packed"]
    old = {tokens: learner.logprobs(samples) for tokens, learner in learners.items()}
    for a, b in zip(old[0], old[BUDGET], strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-5
    for s, lp in zip(samples, old[0], strict=True):
        s.old_logprobs = [x - 0.01 for x in lp]
    steps = {
        tokens: learner.train_step(samples, get_loss("opmd").bound({"tau": 1.0}), len(samples))
        for tokens, learner in learners.items()
    }
    for key in ("loss", "grad_norm", "kl"):
        assert float(steps[BUDGET][key]) == pytest.approx(float(steps[0][key]), rel=1e-5, abs=1e-7), key
    with pytest.raises(ValueError, match="micro_batch_tokens must be >= 0"):
        LearnerConfig(micro_batch_tokens=-1)
