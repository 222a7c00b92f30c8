"""Benchmarks measured side by side in one run (``kvrl bench NAME --out FILE``).

Each writes a JSON object with ``benchmark, kvrl, baseline, ratio, unit`` (ratio = baseline / kvrl
for times, so > 1 means kvrl is faster) plus the settings it ran with.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_weight_sync(model: str | None = None, repeats: int = 5, engines: int = 2) -> dict:
    """In-place weight sync (learner gather -> Ray object store -> reload in every live engine) against
    the restart baseline (learner writes an HF checkpoint, fresh engines start from it). Also reports
    generation throughput of the pool."""
    import ray

    from actors.learner import LearnerGroup
    from actors.placement import ResourceConfig, place
    from actors.rollout import RolloutActor, RolloutPool
    from kimivl import KimiVLProcessor
    from kimivl.tiny import make_tiny
    from rl.learner import LearnerConfig
    from rollout.engine import EngineConfig
    from rollout.prompts import chat_prompt
    from rollout.worker import RolloutRequest, SamplingConfig

    work = Path(tempfile.mkdtemp(prefix="kvrl-bench-"))
    model = model or str(make_tiny(work / "tiny"))
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2 * engines + 4, include_dashboard=False)
    placement = place(ResourceConfig(rollout_actors=engines, learner_ranks=2))
    engine_cfg = EngineConfig(model=model, max_model_len=1024, max_num_seqs=32)
    try:
        pool = RolloutPool(engine_cfg, engines, placement.rollout)
        group = LearnerGroup(model, LearnerConfig(zero_stage=2), 2, placement.learner)
        pool.update_weights(group.state_ref())  # warm-up
        sync = [_timed(lambda: pool.update_weights(group.state_ref())) for _ in range(repeats)]

        def restart() -> None:
            ckpt = group.export_hf(str(work / "export"))
            fresh = [
                RolloutActor.options(**placement.rollout[i]).remote(
                    EngineConfig(**{**engine_cfg.__dict__, "model": ckpt})
                )
                for i in range(engines)
            ]
            ray.get([a.weights_version.remote() for a in fresh])
            for a in fresh:
                ray.kill(a)

        pool.shutdown()  # the baseline's fresh engines take these resources
        baseline = [_timed(restart) for _ in range(max(1, repeats // 2))]
        pool = RolloutPool(engine_cfg, engines, placement.rollout)
        processor = KimiVLProcessor.from_pretrained(model)
        requests = [
            RolloutRequest(f"q{i}", chat_prompt(processor, f"What is {i} + {i}?"), seed=i) for i in range(16)
        ]
        sampling = SamplingConfig(n=4, max_tokens=64)
        pool.generate(requests[:2], sampling)  # warm-up
        start = time.perf_counter()
        results = pool.generate(requests, sampling)
        gen_s = time.perf_counter() - start
        tokens = sum(len(s.response_token_ids) for r in results for s in r.samples)
        pool.shutdown()
        group.shutdown()
    finally:
        placement.remove()
        if started_ray:
            ray.shutdown()
    kvrl_s, base_s = statistics.median(sync), statistics.median(baseline)
    return {
        "benchmark": "weight_sync",
        "kvrl": kvrl_s,
        "baseline": base_s,
        "ratio": base_s / kvrl_s,
        "unit": "s",
        "kvrl_runs": sync,
        "baseline_runs": baseline,
        "engines": engines,
        "baseline_description": "learner saves an HF checkpoint to disk, then fresh vLLM engines load it",
        "generation_tokens_per_s": tokens / gen_s,
        "generation_tokens": tokens,
        "model": model,
    }


BENCHMARKS = {"sync": bench_weight_sync}
