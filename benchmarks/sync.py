"""``kvrl bench sync``: in-place weight sync against save-to-disk + engine reload, at three model sizes.

kvrl: learner rank 0 gathers the weights into Ray's object store and every live vLLM engine reloads them
in place. Baseline: the learner writes an HF checkpoint and fresh engines start from it (what a loop
without in-place sync does). Sizes grow the tiny model's text tower: 1x, ~4x and ~16x parameters.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from actors.learner import LearnerGroup
from actors.placement import ResourceConfig, place, start_ray
from actors.rollout import RolloutActor, RolloutPool
from kimivl.tiny import make_tiny
from learner.rank import LearnerConfig
from rollout.engine import EngineConfig

from .common import result, timed

log = logging.getLogger(__name__)

SIZES = {
    "1x": {},
    "4x": {"num_hidden_layers": 12},
    "16x": {
        "hidden_size": 256,
        "num_hidden_layers": 10,
        "intermediate_size": 512,
        "moe_intermediate_size": 128,
    },
}


def run(quick: bool = False, repeats: int = 3, model: str | None = None, engines: int = 2) -> list[dict]:

    work = Path(tempfile.mkdtemp(prefix="kvrl-bench-sync-"))
    sizes = {"given": None} if model else ({"1x": SIZES["1x"]} if quick else SIZES)
    out = []
    for name, overrides in sizes.items():
        path = model or str(make_tiny(work / name, **overrides))
        out.append(_one(name, path, repeats, engines, work))
    base = out[0]
    for r in out:  # how sync time grows with size: time ratio against parameter ratio
        r["params_vs_smallest"] = r["params"] / base["params"]
        r["sync_time_vs_smallest"] = r["kvrl"] / base["kvrl"]
    return out


def _one(size: str, model: str, repeats: int, engines: int, work: Path) -> dict:
    import ray

    started = not ray.is_initialized()
    if started:
        start_ray(ResourceConfig(rollout_actors=engines, learner_ranks=2))
    placement = place(ResourceConfig(rollout_actors=engines, learner_ranks=2))
    engine_cfg = EngineConfig(model=model, max_model_len=512, max_num_seqs=16)
    try:
        pool = RolloutPool(engine_cfg, engines, placement.rollout)
        group = LearnerGroup(model, LearnerConfig(zero_stage=2), 2, placement.learner)
        state = ray.get(group.state_ref())
        params = sum(t.numel() for t in state.values())
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        pool.update_weights(group.state_ref())  # warm-up
        sync = [timed(lambda: pool.update_weights(group.state_ref()))[0] for _ in range(repeats)]
        pool.shutdown()  # the baseline's fresh engines take these resources

        def reload() -> None:
            ckpt = group.export_hf(str(work / f"export-{size}"))
            fresh = [
                RolloutActor.options(**placement.rollout[i]).remote(
                    EngineConfig(**{**engine_cfg.__dict__, "model": ckpt})
                )
                for i in range(engines)
            ]
            ray.get([a.weights_version.remote() for a in fresh])
            for a in fresh:
                ray.kill(a)

        baseline = [timed(reload)[0] for _ in range(repeats)]
        group.shutdown()
    finally:
        placement.remove()
        if started:
            ray.shutdown()
    log.info("sync %s: %.3f s in place vs %.1f s reload", size, min(sync), min(baseline))
    return result(
        "sync",
        sync,
        baseline,
        "s",
        higher_is_better=False,
        size=f"{size} ({params / 1e6:.2f} M params)",
        params=params,
        bytes=nbytes,
        engines=engines,
        baseline_description="learner saves an HF checkpoint, then fresh vLLM engines load it",
        model=model,
    )
