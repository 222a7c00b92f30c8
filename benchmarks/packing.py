"""``kvrl bench packing``: packed RL micro-batches (``learner.micro_batch_tokens``) against right-padded
ones (``learner.micro_batch_size``), learner tokens per second, on two response-length distributions.

One learner rank (in this process, ZeRO-2, fp32 on CPU) takes the same samples each way: a log-prob
pass and an optimizer step (forward + backward), the work of one RL pass. Tokens per second counts the
real tokens (prompt + response) of the samples, never padding. Each side picks its own best setting
first, on a validation pass of a separate draw of samples (padded: micro_batch_size 2-16; packed:
micro_batch_tokens 512-4096), then both best settings alternate ``repeats`` times on the measured draw.

Workloads (log-normal lengths, correlated within groups, ``sim_inputs.synthetic_trace``), 8 prompts x
4 samples, prompts of 16-64 tokens:
- ``longtail``: median 128, p99 768 response tokens, cut at 1024: the long-tail workload's shape (the
  A3B trace's p99 / median of 6) at the tiny model's scale;
- ``narrow``: median 96, p99 160, cut at 256: responses of similar lengths, where padding wastes little
  (the demo's responses are of this kind; its exact lengths are not used).
The model is the tiny one at ``sync``'s 16x width (hidden 256, 10 layers), so compute grows with tokens.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import statistics
import tempfile
from pathlib import Path

import torch

from kimivl.tiny import make_tiny

from .common import result, timed
from .sim_inputs import synthetic_trace
from .sync import SIZES

log = logging.getLogger(__name__)
WORKLOADS = {
    "longtail": {"median": 128, "p99": 768, "max_tokens": 1024},
    "narrow": {"median": 96, "p99": 160, "max_tokens": 256},
}
PADDED = [2, 4, 8]  # micro_batch_size
PACKED = [512, 1024, 2048, 4096]  # micro_batch_tokens


def draw(workload: dict, seed: int, groups: int = 8, n: int = 4) -> list:
    from learner.experience import Experience

    rng = random.Random(seed)
    trace = synthetic_trace(groups, n, seed, prompt_tokens=(16, 64), **workload)
    samples = []
    for g, group in enumerate(trace):
        prompt = [rng.randrange(10, 900) for _ in range(group.prompt_tokens)]
        for length in group.response_tokens:
            response = [rng.randrange(10, 900) for _ in range(length)]
            samples.append(Experience(prompt, response, reward=float(rng.random() < 0.5), group_id=g))
    return samples


def _one_rank() -> None:
    """This process as a one-rank group (the learner's own start, ``learner.rank.start_distributed``)."""
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def _pass(learner, samples) -> float:
    """Seconds of one log-prob pass and one optimizer step over ``samples``."""
    from rl.losses import assign_advantages, get_loss

    def work():
        for s, lp in zip(samples, learner.logprobs(samples), strict=True):
            s.old_logprobs = lp
        assign_advantages(samples, get_loss("opmd"), {"tau": 1.0})
        learner.train_step(samples, get_loss("opmd").bound({"tau": 1.0}), len(samples))

    return timed(work)[0]


def run(quick: bool = False, repeats: int = 3, model: str | None = None) -> list[dict]:
    from learner.rank import Learner, LearnerConfig

    _one_rank()
    model = model or str(
        make_tiny(Path(tempfile.mkdtemp(prefix="kvrl-bench-packing-")) / "m", **SIZES["16x"])
    )
    padded, packed = ([4], [512]) if quick else (PADDED, PACKED)
    learners = {}
    for size in padded:
        learners["padded", size] = Learner(model, LearnerConfig(zero_stage=2, lr=0.0, micro_batch_size=size))
    for tokens in packed:
        cfg = LearnerConfig(zero_stage=2, lr=0.0, micro_batch_tokens=tokens)
        learners["packed", tokens] = Learner(model, cfg)
    out = []
    for name, workload in ({"longtail": WORKLOADS["longtail"]} if quick else WORKLOADS).items():
        if quick:  # a few short samples: the code path, not a figure
            workload = {**workload, "max_tokens": 128}
        size = {"groups": 2, "n": 4} if quick else {}
        validation, measured = draw(workload, seed=1, **size), draw(workload, seed=0, **size)
        tokens = sum(len(s.prompt_ids) + len(s.response_ids) for s in measured)
        for learner in learners.values():
            _pass(learner, validation[:8])  # warm-up
        tuning = {
            f"{kind} {setting}": _pass(learner, validation) for (kind, setting), learner in learners.items()
        }
        best = {
            kind: min((k for k in learners if k[0] == kind), key=lambda k: tuning[f"{k[0]} {k[1]}"])
            for kind in ("padded", "packed")
        }
        runs: dict[str, list[float]] = {"padded": [], "packed": []}
        for _ in range(repeats):
            for kind in ("padded", "packed"):  # side by side, alternating
                runs[kind].append(tokens / _pass(learners[best[kind]], measured))
        lengths = sorted(len(s.response_ids) for s in measured)
        padded_tokens = padding_of(measured, best["padded"][1])
        log.info(
            "packing %s: packed %.0f vs padded %.0f tokens/s", name, max(runs["packed"]), max(runs["padded"])
        )
        out.append(
            result(
                "packing",
                runs["packed"],
                runs["padded"],
                "tokens/s",
                higher_is_better=True,
                size=f"{name} ({len(measured)} samples, {tokens} tokens)",
                workload=name,
                lengths={
                    "median": statistics.median(lengths),
                    "p99": lengths[int(0.99 * (len(lengths) - 1))],
                },
                chosen={
                    "padded_micro_batch_size": best["padded"][1],
                    "packed_micro_batch_tokens": best["packed"][1],
                },
                validation_seconds=tuning,
                padded_share=padded_tokens / (padded_tokens + tokens),
                baseline_description="right-padded micro-batches at the best learner.micro_batch_size",
                model=model,
            )
        )
    return out


def padding_of(samples, size: int) -> int:
    """Padding tokens the padded path adds at ``micro_batch_size`` (rows padded to each micro-batch's
    longest, from a length-sorted order, as the learner cuts them)."""
    from learner.experience import by_length, micro_batches

    total = 0
    for mb in micro_batches(by_length(samples), size):
        lengths = [len(samples[i].prompt_ids) + len(samples[i].response_ids) for i in mb]
        total += max(lengths) * len(lengths) - sum(lengths)
    return total
