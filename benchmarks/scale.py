"""``kvrl bench scale``: how an RL iteration's time grows with the batch and with the response length.

On the tiny model: 16 prompts x k samples = 64, 256 and 1024 samples at 64 tokens, then 64 samples of
up to 64, 256 and 1024 tokens. Each point reports the iteration's wall time and its phases, per sample
and per generated token, so "does cost grow linearly" is read off the ``*_per_token`` columns (flat =
linear). There is no peer here: ``baseline`` is the smallest point's time, and ``ratio`` is the work
growth over the cost growth against it (1.0 = linear, > 1 = better than linear, like every other ratio).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from pathlib import Path

from kimivl.tiny import make_tiny

from .common import result
from .iteration import PHASES, kvrl_iterations

log = logging.getLogger(__name__)
PROMPTS = 16
BATCH = [(64, 64), (256, 64), (1024, 64)]  # (samples, max tokens)
LENGTH = [(64, 64), (64, 256), (64, 1024)]


def run(quick: bool = False, repeats: int = 3, model: str | None = None) -> list[dict]:

    model = model or str(make_tiny(Path(tempfile.mkdtemp(prefix="kvrl-bench-scale-")) / "tiny"))
    points = [("batch", s, t) for s, t in BATCH] + [("length", s, t) for s, t in LENGTH[1:]]
    if quick:
        points = points[:1]
    measured = [
        (axis, samples, tokens, _point(model, samples, tokens, repeats)) for axis, samples, tokens in points
    ]
    _, base_samples, base_tokens, base = measured[0]
    base_time = statistics.median(r["time_iteration"] for r in base)
    base_work = statistics.median(r["tokens"] for r in base)
    out = []
    for axis, samples, tokens, runs in measured:
        times = [r["time_iteration"] for r in runs]
        work = statistics.median(r["tokens"] for r in runs)
        phases = {k: statistics.median(r[k] for r in runs) for k in PHASES}
        growth = (statistics.median(times) / base_time) / max(work / base_work, 1e-9)
        out.append(
            result(
                "scale",
                times,
                [base_time],
                "s/iteration",
                higher_is_better=False,
                size=f"{axis}: {samples} samples x {tokens} max tokens",
                axis=axis,
                samples=samples,
                max_tokens=tokens,
                generated_tokens=work,
                response_len_mean=statistics.median(r["response_len_mean"] for r in runs),
                phases=phases,
                seconds_per_sample=statistics.median(times) / samples,
                seconds_per_token=statistics.median(times) / max(work, 1),
                phases_per_token={k: v / max(work, 1) for k, v in phases.items()},
                cost_growth_over_work_growth=growth,
                baseline_description=f"the smallest point ({base_samples} samples x {base_tokens} tokens)",
            )
        )
        out[-1]["ratio"] = 1.0 / growth
    return out


def _point(model: str, samples: int, tokens: int, repeats: int) -> list[dict]:
    n = samples // PROMPTS
    overrides = [
        f"trainer.prompts_per_iteration={PROMPTS}",
        f"rollout.sampling.n={n}",
        f"rollout.sampling.max_tokens={tokens}",
        f"rollout.max_model_len={tokens + 256}",
        f"rollout.max_num_seqs={min(samples, 256)}",
        f"rollout.chunk_size={PROMPTS // 2}",
        "learner.micro_batch_size=16",
    ]
    log.info("scale point: %d samples x %d tokens", samples, tokens)
    return kvrl_iterations(model, overrides, repeats)
