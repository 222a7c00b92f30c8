"""``kvrl bench pipeline``: pipelined RL (``trainer.max_staleness: 1``) against the synchronous loop, the
same config on the same resources, side by side in one run.

Resources: one rollout engine pinned to one core and one learner rank to another
(``resources.rollout_cores`` / ``learner_cores``), as separate nodes are on a cluster, so the overlap is
real and each role's idle time can be seen. Reported per run: iterations per hour of the training loop
(the sum of ``time_iteration`` without the held-out evals, which both runs do alike), the idle fraction of
each role (``idle_rollout``, ``idle_learner``), the share of the iteration spent in each phase, and the
held-out accuracy after the last iteration. The top-level ``ratio`` is iterations per hour, pipelined over
synchronous.

Repeat k trains with ``trainer.seed`` = the config's seed + k, every loop alike: another seed moves the
demo's RL accuracy by a few points (DESIGN.md), so one seed cannot tell a 2-point gap from noise.
``accuracy_gaps`` holds pipelined minus synchronous per seed and ``accuracy_gap`` their mean; the speed
figures are medians over the repeats. Both sides do the same work: the learners score each batch before
learning it (the reference and the mismatch monitor), and the pipelined loop runs with
``trainer.stale_reference: learning``, the default (docs/rl.md). At the full size a third loop runs
beside them, pipelined with ``stale_reference: sampling`` (each step centred on the policy that
sampled its batch: about 11 points lost on the demo), with its own ``accuracy_gaps_sampling`` and
``accuracy_gap_sampling`` on the same seeds. (Before the monitor, the ``sampling`` loop skipped the
learners' scoring of a batch sampled ahead, less work than the others.)

Full: the demo's RL stage (``kvrl demo``: its SFT checkpoint, RL data and ``configs/rl.yaml``) for its
iterations, with the held-out accuracy measured once, after the last (``eval`` at the largest budget, 4
samples per problem at T = 1, as the demo's ``rl_accuracy``). ``--model`` names a demo directory; without
it the demo's stages up to ``difficulty`` are built once (``benchmarks.common.demo_inputs``). Quick: the tiny
config for 3 iterations, a check that it all runs (its accuracy means nothing).
"""

from __future__ import annotations

import logging
import os
import statistics
from pathlib import Path

from rl.trainer import RLConfig
from runkit.config import load_config

from .common import ROOT, demo_inputs, mean_interval, result, tiny_rl
from .iteration import metric_rows

log = logging.getLogger(__name__)
ONE_EACH = [
    "resources.rollout_actors=1",
    "resources.learner_ranks=1",
    "resources.rollout_cores=[0]",
    "resources.learner_cores=[1]",
]
PHASES = ("time_rollout", "time_reward", "time_learn", "time_wait", "time_sync")
# name -> overrides of each loop; the last runs only at the full size. All do the same work: the
# learners score every batch before learning it (the reference and the mismatch monitor).
# pipelined_sampling centres tau on the sampling policy instead (k1.5's eq. 3 as written), shown beside.
LOOPS = {
    "sync": ["trainer.max_staleness=0", "trainer.old_logprobs=learner"],
    "pipelined": [
        "trainer.max_staleness=1",
        "trainer.stale_reference=learning",
        "trainer.old_logprobs=learner",
    ],
    "pipelined_sampling": ["trainer.max_staleness=1", "trainer.stale_reference=sampling"],
}


def run(quick: bool = False, repeats: int = 1, model: str | None = None) -> list[dict]:
    if len(os.sched_getaffinity(0)) < 2:
        raise RuntimeError("kvrl bench pipeline needs 2 CPU cores: one for rollout, one for learning")
    if quick:
        config = ROOT / "configs" / "tiny" / "rl.yaml"
        base = tiny_rl(model, "kvrl-bench-pipeline-tiny-")
        iterations = 3
    else:
        demo = demo_inputs(model)
        config = demo / "configs" / "rl.yaml"
        iterations = load_config(RLConfig, config, []).trainer.iterations
        base = demo_eval(demo, iterations)
    seed = load_config(RLConfig, config, []).trainer.seed
    loops = list(LOOPS)[:2] if quick else list(LOOPS)
    runs: dict[str, list[dict]] = {name: [] for name in loops}
    for k in range(repeats):
        for name in loops:
            overrides = [*base, *LOOPS[name], f"trainer.seed={seed + k}"]
            runs[name].append(_one(config, overrides, iterations))
    summary = {name: _median(r) for name, r in runs.items()}
    sync = summary["sync"]
    gaps = _gaps(runs["sync"], runs["pipelined"])
    extra = {}
    if "pipelined_sampling" in runs:
        sampling = _gaps(runs["sync"], runs["pipelined_sampling"])
        extra = {
            "accuracy_gaps_sampling": sampling,
            "accuracy_gap_sampling": statistics.fmean(sampling) if sampling else None,
        }
    bound = "rollout" if sync["phase_share"]["time_rollout"] >= sync["phase_share"]["time_learn"] else "learn"
    return [
        result(
            "pipeline",
            [r["iterations_per_hour"] for r in runs["pipelined"]],
            [r["iterations_per_hour"] for r in runs["sync"]],
            "iterations/hour",
            higher_is_better=True,
            size=f"{iterations} iterations, 1 engine + 1 learner rank on disjoint cores"
            + (" (tiny)" if quick else " (demo RL)"),
            runs=summary,
            seeds=[seed + k for k in range(repeats)],
            accuracy_gaps=gaps,
            accuracy_gap=statistics.fmean(gaps) if gaps else None,
            accuracy_gap_ci95=list(mean_interval(gaps)[1:]) if gaps else None,
            **extra,
            # the synchronous iteration's longer phase bounds what overlapping can give:
            # (rollout + learn + rest) / (max(rollout, learn) + rest)
            bound_by=bound,
            limit=_limit(sync["phase_share"]),
            baseline_description="the synchronous loop (trainer.max_staleness 0) on the same resources",
            config=str(config),
        )
    ]


def _one(config: Path, overrides: list[str], iterations: int) -> dict:
    rows = metric_rows(
        config,
        [
            f"trainer.iterations={iterations}",
            f"trainer.save_every={iterations}",  # one checkpoint, at the end
            *ONE_EACH,
            *overrides,
        ],
    )
    seconds = sum(r["time_iteration"] - r.get("time_eval", 0.0) for r in rows)
    accuracy = [v for k, v in rows[-1].items() if k.startswith("tts/budget_")]
    return {
        "iterations_per_hour": 3600 * len(rows) / seconds,
        "seconds": seconds,
        "idle_rollout": statistics.fmean(r["idle_rollout"] for r in rows),
        "idle_learner": statistics.fmean(r["idle_learner"] for r in rows),
        "phase_share": {p: sum(r[p] for r in rows) / seconds for p in PHASES},
        "staleness": [r["staleness"] for r in rows],
        "heldout_accuracy": accuracy[-1] if accuracy else None,  # the largest budget's
        "run_dir": rows[0]["run_dir"],
    }


def _gaps(sync: list[dict], other: list[dict]) -> list[float]:
    """Held-out accuracy of ``other`` minus ``sync``, seed by seed (where both measured one)."""
    return [
        o["heldout_accuracy"] - s["heldout_accuracy"]
        for s, o in zip(sync, other, strict=True)
        if s["heldout_accuracy"] is not None and o["heldout_accuracy"] is not None
    ]


def _limit(share: dict[str, float]) -> float:
    """The speed-up if the shorter of rollout and learning hid entirely behind the longer."""
    rollout, learn = share["time_rollout"], share["time_learn"]
    return 1.0 / (1.0 - min(rollout, learn))


def _median(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda r: r["iterations_per_hour"])
    mid = dict(ordered[(len(ordered) - 1) // 2])
    mid["iterations_per_hour_runs"] = [r["iterations_per_hour"] for r in runs]
    mid["heldout_accuracy_runs"] = [r["heldout_accuracy"] for r in runs]  # one per seed, in seed order
    return mid


def demo_eval(demo: Path, iterations: int) -> list[str]:
    """The held-out accuracy once, after iteration ``iterations``: the largest budget, 4 samples at T = 1."""
    cfg = load_config(RLConfig, demo / "configs" / "rl.yaml", [])
    return [
        f"eval.tts_every={iterations}",
        f"eval.budgets=[{max(cfg.eval.budgets)}]",
        "eval.samples=4",
        "tracking.samples_every=0",
    ]
