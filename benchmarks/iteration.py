"""kvrl RL iterations timed in-process on the tiny config: the engine and learner start-up is excluded,
the first iteration is a warm-up, and each later one reports its wall time and phases (from metrics)."""

from __future__ import annotations

import json
import logging
import tempfile
from itertools import pairwise
from pathlib import Path

from rl.trainer import RLConfig, train
from runkit.config import load_config

log = logging.getLogger(__name__)
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "rl.yaml"
PHASES = ("time_rollout", "time_reward", "time_learn", "time_sync")


def metric_rows(config: Path, overrides: list[str]) -> list[dict]:
    """Train ``config`` with ``overrides`` in-process into a fresh directory (no wandb); its metrics rows.
    The run directory is each row's ``run_dir``."""
    out = Path(tempfile.mkdtemp(prefix="kvrl-bench-")) / "run"
    cfg = load_config(RLConfig, config, [f"trainer.output_dir={out}", "tracking.wandb=disabled", *overrides])
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{**r, "run_dir": str(out)} for r in rows]


def kvrl_iterations(model: str, overrides: list[str], repeats: int, tail: int = 0) -> list[dict[str, float]]:
    """``repeats`` timed iterations (after one warm-up, and before ``tail`` more left out) of the tiny RL
    config with ``overrides``: per iteration ``time_iteration``, the four phase times and the tokens.

    ``time_iteration`` is wall clock from one iteration's start to the next one's: everything the
    iteration does, its logging included (as a TRL step's marks include everything), so one more
    iteration runs after the timed ones; checkpoints are off (the last iteration alone writes one)."""

    rows = metric_rows(
        CONFIG,
        [
            f"model={model}",
            f"trainer.iterations={repeats + 2 + tail}",
            f"trainer.save_every={repeats + 10}",  # only the last iteration writes a checkpoint
            "tracking.samples_every=0",
            *overrides,
        ],
    )
    spans = [b["started_at"] - a["started_at"] for a, b in pairwise(rows)]
    rows = rows[1 : 1 + repeats]
    return [
        {
            "time_iteration": span,
            "time_iteration_inner": r["time_iteration"],  # sample to eval: without logging
            **{k: r[k] for k in PHASES},
            "tokens": round(r["rollout_tokens"]),
            "response_len_mean": r["response_len_mean"],
        }
        for r, span in zip(rows, spans[1:], strict=False)
    ]
