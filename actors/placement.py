"""Where actors run: Ray placement groups built from config, checked against the cluster first.

``colocate: false`` gives learner ranks and rollout engines their own bundles; ``colocate: true``
puts rollout engine i in learner rank i's bundle (they share its GPU, e.g. 0.5 each).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

log = logging.getLogger(__name__)
# what a call to an actor raises when the actor itself is gone (killed, crashed, its node lost)
ACTOR_FAILURES = (RayActorError, ActorDiedError, ActorUnavailableError)


class ClusterTooSmall(ValueError):
    """The config asks for more than the Ray cluster has; the message says what is missing."""


@dataclass
class ResourceConfig:
    rollout_actors: int = 2
    rollout_cpus: float = 1.0
    rollout_gpus: float = 0.0
    learner_ranks: int = 2
    learner_cpus: float = 1.0
    learner_gpus: float = 0.0
    reward_cpus: float = 1.0
    colocate: bool = False
    placement_timeout_s: float = 60.0
    # Custom Ray resources each bundle also asks for, e.g. {"rollout_node": 0.01}: pin rollout engines and
    # learner ranks to the nodes that advertise them (`ray start --resources='{"rollout_node": 8}'`).
    rollout_resources: dict[str, float] = field(default_factory=dict)
    learner_resources: dict[str, float] = field(default_factory=dict)
    reward_resources: dict[str, float] = field(default_factory=dict)
    # None: the cluster in RAY_ADDRESS (set under `ray job submit`), else one that `ray start` runs on
    # this machine, else a new local one. Or an address, e.g. "10.0.0.1:6379" ("auto": must be running;
    # "local": always a new one on this machine, whatever else runs here).
    ray_address: str | None = None
    # CPU ids to pin every rollout engine's / learner rank's threads to; empty: no pinning. Disjoint sets
    # keep rollout and learning off each other's cores, as separate nodes do on a cluster, so a pipelined
    # run (trainer.max_staleness) overlaps them for real on one CPU machine.
    rollout_cores: list[int] = field(default_factory=list)
    learner_cores: list[int] = field(default_factory=list)

    def __post_init__(self):
        shared = sorted(set(self.rollout_cores) & set(self.learner_cores))
        if shared:
            raise ValueError(
                f"resources.rollout_cores and resources.learner_cores share CPU(s) {shared}: "
                "they must be disjoint"
            )
        if self.rollout_actors < 0 or self.learner_ranks < 1:
            raise ValueError("learner_ranks must be >= 1 and rollout_actors >= 0 (0: SFT, no engines)")
        if self.colocate and self.rollout_actors != self.learner_ranks:
            raise ValueError(
                "colocate needs rollout_actors == learner_ranks (engine i shares rank i's bundle)"
            )

    def demand(self) -> dict[str, float]:
        cpus = (
            self.rollout_actors * self.rollout_cpus
            + self.learner_ranks * self.learner_cpus
            + self.reward_cpus
        )
        gpus = self.rollout_actors * self.rollout_gpus + self.learner_ranks * self.learner_gpus
        out = {"CPU": cpus, "GPU": gpus}
        for extra, count in (
            (self.rollout_resources, self.rollout_actors),
            (self.learner_resources, self.learner_ranks),
            (self.reward_resources, 1),
        ):
            for name, amount in extra.items():
                out[name] = out.get(name, 0.0) + amount * count
        return out


def job_runtime_env(environ: Mapping[str, str] = os.environ) -> dict[str, Any] | None:
    """The runtime env a driver gives its job when it joins a running cluster: the driver's PYTHONPATH,
    absolute, so that a plug-in verifier the driver imports (``module:function``) imports in every
    worker too. A new local cluster needs none: its workers inherit the driver's environment. None too
    when the job's own runtime env (``ray job submit``'s, in ``RAY_JOB_CONFIG_JSON_ENV_VAR``) ships code
    (``working_dir``, ``py_modules``) or sets PYTHONPATH: the job's word wins, and a path on the
    submitting node would mean nothing on the others."""
    paths = [str(Path(p).resolve()) for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    job = json.loads(environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}
    if not paths or job.get("working_dir") or job.get("py_modules"):
        return None
    if "PYTHONPATH" in (job.get("env_vars") or {}):
        return None
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}


def start_ray(cfg: ResourceConfig) -> str:
    """Join a running cluster (``cfg.ray_address``, else RAY_ADDRESS) or start a local one big enough for
    ``cfg``; returns a line saying which cluster, for the job log. A joined cluster's workers get the
    driver's PYTHONPATH through the job's runtime env (:func:`job_runtime_env`)."""
    if not ray.is_initialized():
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
        if address and address != "local":
            ray.init(address=address, runtime_env=job_runtime_env())
        if not address:  # a cluster that `ray start` runs on this machine, if there is one
            with contextlib.suppress(ConnectionError):
                ray.init(address="auto", runtime_env=job_runtime_env())
        if not ray.is_initialized():
            # A local one. CPU counts are reservations, so give it at least what the config asks.
            cpus = max(os.cpu_count() or 1, math.ceil(cfg.demand()["CPU"]))
            ray.init(address="local", num_cpus=cpus, include_dashboard=False)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = ray.cluster_resources()
    where = ray.get_runtime_context().gcs_address
    line = f"Ray cluster {where}: {len(nodes)} node(s), {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU"
    log.info(line)
    return line


def pin_threads(cores: Sequence[int], key: str) -> None:
    """Run this process (an actor) on ``cores`` only, with one torch/OpenMP thread per core. Call it
    before torch or vLLM start their thread pools. ``key`` names the config key in errors."""
    if not cores:
        return
    have = os.sched_getaffinity(0)
    missing = sorted(set(cores) - have)
    if missing:
        raise ValueError(f"resources.{key}: CPU(s) {missing} are not on this node (it has {sorted(have)})")
    os.sched_setaffinity(0, set(cores))
    os.environ["OMP_NUM_THREADS"] = str(len(cores))
    import torch

    torch.set_num_threads(len(cores))
    log.info("pinned to CPU(s) %s", sorted(cores))


def check_fits(cfg: ResourceConfig, available: dict[str, float] | None = None) -> None:
    """Fail fast, naming what is missing, if the cluster cannot hold the requested actors."""
    available = available if available is not None else ray.cluster_resources()
    missing = []
    for res, need in cfg.demand().items():
        have = float(available.get(res, 0.0))
        if need > have + 1e-9:
            missing.append(f"{need:g} {res} (the cluster has {have:g})")
    if missing:
        raise ClusterTooSmall(
            f"resources: {cfg.rollout_actors} rollout actors x ({cfg.rollout_cpus:g} CPU, "
            f"{cfg.rollout_gpus:g} GPU) + {cfg.learner_ranks} learner ranks x ({cfg.learner_cpus:g} CPU, "
            f"{cfg.learner_gpus:g} GPU) "
            f"+ reward {cfg.reward_cpus:g} CPU need " + " and ".join(missing)
        )


@dataclass
class Placement:
    learner: list[dict[str, Any]]
    rollout: list[dict[str, Any]]
    reward: dict[str, Any]
    groups: list[Any]

    def remove(self) -> None:
        for pg in self.groups:
            ray.util.remove_placement_group(pg)


def _bundle(cpus: float, gpus: float, extra: dict[str, float]) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **extra}


def _at(pg, index: int, cpus: float, gpus: float) -> dict[str, Any]:
    return {
        "num_cpus": cpus,
        "num_gpus": gpus,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
    }


def place(cfg: ResourceConfig) -> Placement:
    """Reserve bundles and return the ``.options(...)`` for each actor."""
    check_fits(cfg)
    groups = []
    if cfg.colocate:
        extra = {
            k: cfg.learner_resources.get(k, 0) + cfg.rollout_resources.get(k, 0)
            for k in {**cfg.learner_resources, **cfg.rollout_resources}
        }
        cpus, gpus = cfg.learner_cpus + cfg.rollout_cpus, cfg.learner_gpus + cfg.rollout_gpus
        shared = [_bundle(cpus, gpus, extra)] * cfg.learner_ranks
        pg = placement_group(shared, strategy="PACK")
        groups.append(pg)
        learner = [_at(pg, i, cfg.learner_cpus, cfg.learner_gpus) for i in range(cfg.learner_ranks)]
        rollout = [_at(pg, i, cfg.rollout_cpus, cfg.rollout_gpus) for i in range(cfg.rollout_actors)]
    else:
        lpg = placement_group(
            [_bundle(cfg.learner_cpus, cfg.learner_gpus, cfg.learner_resources)] * cfg.learner_ranks,
            strategy="PACK",
        )
        groups.append(lpg)
        learner = [_at(lpg, i, cfg.learner_cpus, cfg.learner_gpus) for i in range(cfg.learner_ranks)]
        rollout = []
        if cfg.rollout_actors:
            rpg = placement_group(
                [_bundle(cfg.rollout_cpus, cfg.rollout_gpus, cfg.rollout_resources)] * cfg.rollout_actors,
                strategy="SPREAD",
            )
            groups.append(rpg)
            rollout = [_at(rpg, i, cfg.rollout_cpus, cfg.rollout_gpus) for i in range(cfg.rollout_actors)]
    ready = ray.get([pg.ready() for pg in groups], timeout=cfg.placement_timeout_s)
    del ready
    reward = {
        "num_cpus": cfg.reward_cpus,
        **({"resources": cfg.reward_resources} if cfg.reward_resources else {}),
    }
    return Placement(learner, rollout, reward, groups)
