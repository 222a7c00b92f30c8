"""A bf16 rollout engine against the fp32 learner on a tiny Kimi-VL: how often their MoE routing differs,
and the mismatch KL (k3 per token) of the learner's log-probs with routing replay off and on.

    .venv/bin/python scripts/routing_mismatch.py DIR EXPERTS LAYERS TOP_K

makes a tiny checkpoint in DIR (unless one is there) with EXPERTS routed experts, LAYERS decoder layers
(the first one dense) and TOP_K active, samples 8 prompts x 4 samples of 64 tokens with a bf16 engine that
records routing, and scores them with the fp32 learner. A probe for choosing the measurement model of
issue #38, not a benchmark: one seed, one batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from kimivl.routes import NOT_ROUTED


def sample(checkpoint: str):
    from rollout.engine import EngineConfig
    from rollout.prompts import chat_prompt
    from rollout.worker import RolloutRequest, RolloutWorker, SamplingConfig

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    engine = EngineConfig(
        model=checkpoint, dtype="bfloat16", max_model_len=512, max_num_seqs=32, record_routes=True
    )
    worker = RolloutWorker(engine)
    try:
        requests = [
            RolloutRequest(f"q{i}", chat_prompt(worker.processor, f"What is {i} + {2 * i + 3}?", 0), [], i)
            for i in range(8)
        ]
        results = worker.generate(requests, SamplingConfig(n=4, max_tokens=64))
    finally:
        worker.shutdown()
    return [s for r in results for s in r.samples]


def score(checkpoint: str, samples) -> None:
    from kimivl import KimiVLForConditionalGeneration
    from learner.logprobs import response_logprobs
    from learner.routing import RoutingReplay

    model = KimiVLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    replay = RoutingReplay(model)
    k3: dict[bool, list[float]] = {False: [], True: []}
    for s in samples:
        routes = torch.from_numpy(s.routes.astype(np.int64))
        routes[routes == NOT_ROUTED] = -1
        for on in (False, True):
            with replay.active(routes, on), torch.no_grad():
                lp = response_logprobs(model, s.prompt_token_ids, s.response_token_ids)
            x = (lp - torch.tensor(s.logprobs)).double()
            k3[on] += (torch.expm1(x) - x).tolist()
    shares = [round(v, 4) for v in replay.disagreement()]
    print(f"MoE layers {len(replay.routers)}, top-{replay.top_k}; {len(k3[False])} response tokens")
    print(f"routing disagreement per MoE layer (both passes): {shares}")
    print(f"mismatch KL (k3 mean): replay off {np.mean(k3[False]):.3g}, on {np.mean(k3[True]):.3g}")


def main(argv: list[str]) -> None:
    out, experts, layers, top_k = argv[0], *(int(x) for x in argv[1:4])
    if not (Path(out) / "config.json").exists():
        from kimivl.tiny import make_tiny

        make_tiny(out, seed=0, n_routed_experts=experts, num_hidden_layers=layers, num_experts_per_tok=top_k)
    score(out, sample(out))


if __name__ == "__main__":
    main(sys.argv[1:])
