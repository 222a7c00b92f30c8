"""``kvrl bench replay``: the rollout/learner mismatch of a bf16 rollout against fp32 learners, without and
with routing replay, and what it does to learning (issue #38's measurement model, docs/benchmarks.md).

Three RL runs per seed, the same config otherwise:

- ``fp32``: the engines in float32, as the learners (the reference: the policies differ only by kernels);
- ``bf16``: the engines in bfloat16 (``rollout.dtype``), routes recorded (``rollout.record_routes``) so the
  learners report how often their routing differs (``routing_disagreement/layer_<i>``) and the mismatch
  with the rollout's routing replayed on the same batch (``mismatch_kl_replay_on``), without training on it;
- ``bf16_replay_tis``: bfloat16 engines, ``trainer.routing_replay`` and ``off_policy_correction: tis``.

Each run's policy after its last iteration is evaluated the same way, by ``kvrl eval tts`` on float32
engines (the demo's held-out set and largest budget, 4 samples a problem at T = 1, the run's seed), so the
accuracies compare what was learned, not the precision it is sampled in.

The top-level ``kvrl`` / ``baseline`` are the mean mismatch KL (``mismatch_kl``: k3 on every sampled
token, per token, over the run's iterations) of ``bf16_replay_tis`` and of ``bf16``, one figure per seed;
``ratio`` (baseline / kvrl, > 1: replay lowers it) is the goal's "at most half" read as ≥ 2. Beside it:
the same comparison on the same batches (``bf16``'s ``mismatch_kl`` over its ``mismatch_kl_replay_on``),
the per-layer disagreement without replay, and the held-out accuracy of each run with the differences to
``fp32`` per seed, their mean and its 95% interval (Student's t over the seeds).

Full: the demo's RL stage (``--model`` a demo directory, or its inputs built once). Quick: the tiny
config for 1 iteration with 2 samples per held-out problem: that it all runs (its figures mean nothing).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from pathlib import Path

from evaluation.tts import TTSJob, run_tts_job
from rl.trainer import RLConfig
from runkit.config import load_config

from .common import ROOT, demo_inputs, mean_interval, result, tiny_rl
from .iteration import metric_rows

log = logging.getLogger(__name__)
ARMS = {
    "fp32": ["rollout.dtype=float32"],
    "bf16": ["rollout.dtype=bfloat16", "rollout.record_routes=true"],
    "bf16_replay_tis": [
        "rollout.dtype=bfloat16",
        "trainer.routing_replay=true",
        "trainer.off_policy_correction=tis",
    ],
}


def run(quick: bool = False, repeats: int = 3, model: str | None = None) -> list[dict]:
    if quick:
        config, iterations = ROOT / "configs" / "tiny" / "rl.yaml", 1
        data = ROOT / "configs" / "tiny" / "data" / "rl_train.jsonl"
        base = [*tiny_rl(model, "kvrl-bench-replay-tiny-"), f"eval.data={data}", "eval.max_samples=4"]
    else:
        demo = demo_inputs(model)
        config, base = demo / "configs" / "rl.yaml", []
        iterations = load_config(RLConfig, config, []).trainer.iterations
    cfg = load_config(RLConfig, config, base)
    seeds = [cfg.trainer.seed + k for k in range(repeats)]
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for seed in seeds:
        for arm, overrides in ARMS.items():
            rows = metric_rows(
                config,
                [
                    *base,
                    *overrides,
                    f"trainer.seed={seed}",
                    f"trainer.iterations={iterations}",
                    f"trainer.save_every={iterations}",  # one checkpoint: the policy evaluated
                    "eval.tts_every=0",  # evaluated after the run, alike for every arm
                    "tracking.samples_every=0",
                ],
            )
            runs[arm].append(_summary(rows))
            log.info("replay bench: seed %d, %s: %s", seed, arm, runs[arm][-1]["mismatch_kl"])
    _evaluate(cfg, runs, seeds, samples=2 if quick else 4)
    return [_result(runs, seeds, iterations, str(config), quick)]


def _summary(rows: list[dict]) -> dict:
    """One run's mismatch figures (means over its iterations) and where its last checkpoint is."""
    run_dir = Path(rows[0]["run_dir"])

    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if key in r]
        return statistics.fmean(values) if values else None

    layers = sorted({k for r in rows for k in r if k.startswith("routing_disagreement/")})
    return {
        "mismatch_kl": mean("mismatch_kl"),
        "mismatch_kl_per_iteration": [r.get("mismatch_kl") for r in rows],
        "mismatch_kl_replay_on": mean("mismatch_kl_replay_on"),
        "mismatch_kl_replay_off": mean("mismatch_kl_replay_off"),
        "logprob_gap_mean": mean("rollout_learner_logprob_gap_mean"),
        "ratio_outside": mean("mismatch_ratio_outside"),
        "routing_disagreement": {k.split("/", 1)[1]: mean(k) for k in layers},
        "train_accuracy_last": rows[-1]["accuracy"],
        "seconds": sum(r["time_iteration"] for r in rows),
        "run_dir": str(run_dir),
        "checkpoint": str(run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()),
    }


def _evaluate(cfg: RLConfig, runs: dict[str, list[dict]], seeds: list[int], samples: int) -> None:
    """Held-out accuracy at the largest budget of every run's final policy, on float32 engines."""
    data = cfg.eval.data or cfg.data.path
    for i, seed in enumerate(seeds):
        curve = cfg.eval.curve(seed)
        curve.budgets, curve.samples = [max(cfg.eval.budgets)], samples
        checkpoints = [runs[arm][i]["checkpoint"] for arm in ARMS]
        out = Path(tempfile.mkdtemp(prefix="kvrl-bench-replay-eval-"))
        job = TTSJob(checkpoints, data, curve, str(out), cfg.eval.max_samples, wandb="disabled")
        points = {p.checkpoint: p for p in run_tts_job(job)["points"]}
        for arm in ARMS:
            point = points[runs[arm][i]["checkpoint"]]
            runs[arm][i]["heldout_accuracy"] = point.accuracy
            runs[arm][i]["heldout_ci95"] = [point.ci_low, point.ci_high]


def _result(runs: dict[str, list[dict]], seeds: list[int], iterations: int, config: str, quick: bool) -> dict:
    def per_seed(arm: str, key: str) -> list[float]:
        return [r[key] for r in runs[arm]]

    def gaps(arm: str) -> dict:
        ours, reference = per_seed(arm, "heldout_accuracy"), per_seed("fp32", "heldout_accuracy")
        diffs = [a - b for a, b in zip(ours, reference, strict=True)]
        mean, low, high = mean_interval(diffs)
        return {"per_seed": diffs, "mean": mean, "ci95": [low, high]}

    bf16 = runs["bf16"]
    same_batch = [r["mismatch_kl"] / r["mismatch_kl_replay_on"] for r in bf16 if r["mismatch_kl_replay_on"]]
    layers = sorted({k for r in bf16 for k in r["routing_disagreement"]})
    return result(
        "replay",
        per_seed("bf16_replay_tis", "mismatch_kl"),
        per_seed("bf16", "mismatch_kl"),
        "mismatch KL (k3 per sampled token)",
        higher_is_better=False,
        size=f"{iterations} iterations, bf16 engines vs fp32 learners, {len(seeds)} seeds"
        + (" (tiny)" if quick else " (demo RL)"),
        seeds=seeds,
        runs=runs,
        same_batch_ratio=same_batch,  # bf16's KL over the KL with its routes replayed, on the same batches
        routing_disagreement_without_replay={
            layer: statistics.fmean(r["routing_disagreement"][layer] for r in bf16) for layer in layers
        },
        heldout_accuracy={arm: per_seed(arm, "heldout_accuracy") for arm in ARMS},
        accuracy_gap_replay_tis=gaps("bf16_replay_tis"),  # the goal: within 1 point of fp32
        accuracy_gap_bf16=gaps("bf16"),
        baseline_description="bf16 engines without routing replay or correction, same seeds",
        config=config,
    )
