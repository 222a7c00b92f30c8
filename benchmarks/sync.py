"""``kvrl bench sync``: the streamed weight sync against the object-store path, at three model sizes.

kvrl (``rollout.weight_sync: stream``): learner rank 0 broadcasts the weights module by module, in
buckets, to every engine over a group of their own (``actors/stream.py``). Baseline (``object_store``,
kvrl's path before streaming): every rank gathers the whole model, rank 0 puts a host copy into Ray's
object store and each engine fetches it and reloads in place. Both with ZeRO-3 learners (2 ranks, as the
Kimi-VL-A3B configs) and 2 engines. Reported per size: seconds per sync, and the extra peak resident
memory of each learner rank during a sync (its ``VmHWM`` after ``clear_refs`` reset it, minus its RSS
before): the streamed path's bound is the largest module plus one bucket (``bounds``). Sizes grow the
tiny model's text tower: 1x, ~4x, ~16x and ~256x (~480 MB of fp32 weights, a sync's memory well clear
of the processes' own) parameters. Each rank's increase is set beside what ``kvrl plan``'s formulas give
for it (``actors/plan_memory.py`` ``learner_sync_bytes``: CPU learners over gloo). The learners run
with glibc returning freed memory at once (``EXACT_RSS_ENV``), so the increase is what a sync holds,
not less because the allocator kept pages from the sync before (both paths alike).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from actors.learner import LearnerGroup
from actors.placement import ResourceConfig, place, start_ray
from actors.plan_memory import learner_sync_bytes, model_shape
from actors.rollout import RolloutPool
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
    # ~480 MB of fp32 weights
    "256x": {
        "hidden_size": 768,
        "num_hidden_layers": 8,
        "intermediate_size": 3072,
        "moe_intermediate_size": 768,
        "n_routed_experts": 8,
    },
}
# glibc returns every allocation of 64 KiB or more to the system when it is freed (a fixed mmap
# threshold, no heap trimming delay), so a learner's RSS is what it holds now, not what its allocator
# kept from an earlier sync: the "exact RSS" runs, whose increase is compared with the plan's.
EXACT_RSS_ENV = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=0"}


def run(quick: bool = False, repeats: int = 3, model: str | None = None, engines: int = 2) -> list[dict]:

    work = Path(tempfile.mkdtemp(prefix="kvrl-bench-sync-"))
    sizes = {"given": None} if model else ({"1x": SIZES["1x"]} if quick else SIZES)
    out = []
    for name, overrides in sizes.items():
        path = model or str(make_tiny(work / name, **overrides))
        out.append(_one(name, path, repeats, engines))
    base = out[0]
    for r in out:  # how sync time grows with size: time ratio against parameter ratio
        r["params_vs_smallest"] = r["params"] / base["params"]
        r["sync_time_vs_smallest"] = r["kvrl"] / base["kvrl"]
    return out


def _one(
    size: str, model: str, repeats: int, engines: int, bucket_mb: float = 4.0, exact_rss: bool = True
) -> dict:
    import ray

    from actors.stream import WeightStream

    started = not ray.is_initialized()
    if started:
        start_ray(ResourceConfig(rollout_actors=engines, learner_ranks=2))
    placement = place(ResourceConfig(rollout_actors=engines, learner_ranks=2))
    engine_cfg = EngineConfig(model=model, max_model_len=512, max_num_seqs=16, weight_stream=True)
    try:
        pool = RolloutPool(engine_cfg, engines, placement.rollout)
        cfg = LearnerConfig(zero_stage=3, sync_bucket_mb=bucket_mb)
        options = placement.learner
        if exact_rss:
            options = [{**o, "runtime_env": {"env_vars": EXACT_RSS_ENV}} for o in options]
        group = LearnerGroup(model, cfg, 2, options)
        bounds = ray.get(group.actors[0].stream_bounds.remote())
        stream = WeightStream(group)
        paths = {
            "stream": lambda: pool.stream_weights(stream),
            "object_store": lambda: pool.update_weights(group.state_ref()),
        }
        seconds: dict[str, list[float]] = {p: [] for p in paths}
        extra_mb: dict[str, list[list[float]]] = {p: [] for p in paths}
        for sync in paths.values():
            sync()  # warm-up (the stream forms its group)
        for _ in range(repeats):
            for name, sync in paths.items():  # side by side, alternating
                before = ray.get([a.reset_peak_rss.remote() for a in group.actors])
                seconds[name].append(timed(sync)[0])
                peaks = ray.get([a.peak_rss_mb.remote() for a in group.actors])
                extra_mb[name].append([p - b for p, b in zip(peaks, before, strict=True)])
        pool.shutdown()
        group.shutdown()
    finally:
        placement.remove()
        if started:
            ray.shutdown()
    params = bounds["model"] // 4  # float32 learners
    plan = plan_extra_mb(model, int(bucket_mb * 2**20))
    worst = {p: [max(r[k] for r in runs) for k in range(2)] for p, runs in extra_mb.items()}
    log.info(
        "sync %s: stream %.3f s vs object store %.3f s",
        size,
        min(seconds["stream"]),
        min(seconds["object_store"]),
    )
    return result(
        "sync",
        seconds["stream"],
        seconds["object_store"],
        "s",
        higher_is_better=False,
        size=f"{size} ({params / 1e6:.2f} M params)",
        params=params,
        bytes=bounds["model"],
        engines=engines,
        bounds_mb={k: v / 2**20 for k, v in bounds.items()},
        # per repeat, per rank; rank 0 sends, under ZeRO-3 every rank gathers
        extra_peak_mb=extra_mb,
        extra_peak_rank0_mb={p: max(r[0] for r in runs) for p, runs in extra_mb.items()},
        # kvrl plan's formulas for the same increase, per rank; measured (the largest repeat) / plan
        plan_extra_mb=plan,
        measured_vs_plan={p: [w / x for w, x in zip(worst[p], plan[p], strict=True)] for p in plan},
        exact_rss=exact_rss,
        baseline_description="object_store: every rank gathers the whole model, rank 0 puts a host "
        "copy in Ray's object store, each engine fetches it and reloads in place",
        model=model,
    )


def plan_extra_mb(model: str, bucket_bytes: int) -> dict[str, list[float]]:
    """What kvrl plan's formulas give for each learner rank's RSS increase during a sync here: fp32 CPU
    learners at ZeRO-3 over gloo, per path, ranks 0 and 1 (MiB)."""
    shape = model_shape(model)
    kw = dict(zero_stage=3, dtype_bytes=4, bucket_bytes=bucket_bytes, gloo=True, host_learner=True)
    return {
        path: [learner_sync_bytes(shape, path=path, rank=r, **kw) / 2**20 for r in (0, 1)]
        for path in ("stream", "object_store")
    }
