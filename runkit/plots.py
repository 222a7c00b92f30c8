"""PNG plots of a training run's ``metrics.jsonl``: reward, accuracy and length over RL iterations."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a ``metrics.jsonl``; a torn last line (a run killed mid-write) is left out."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["iteration"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
    pts = [(x, y) for x, y in pts if math.isfinite(y)]
    return [x for x, _ in pts], [y for _, y in pts]


def heldout_key(rows: Sequence[dict]) -> str | None:
    """The in-training eval column of the largest thinking budget (``tts/budget_<b>``), if any."""
    keys = {k for r in rows for k in r if k.startswith("tts/budget_")}
    return max(keys, key=lambda k: int(k.rsplit("_", 1)[1])) if keys else None


def plot_training(rows: Sequence[dict], path: str | Path, title: str = "RL training") -> Path:
    """Four panels over iterations: reward; accuracy (held-out at every evaluation if the run made
    them, and the rollout batches); the rollout batches' accuracy per difficulty level (a curriculum
    moves batches to harder problems, so the batch accuracy alone can fall while every level rises);
    mean response length (with the truncation rate on a second axis)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 3.8), dpi=110)
    FigureCanvasAgg(fig)
    reward_ax, acc_ax, level_ax, len_ax = fig.subplots(1, 4)
    levels = sorted({k for r in rows for k in r if k.startswith("accuracy/difficulty_")})
    for key in levels:
        level_ax.plot(*_series(rows, key), marker=".", label=f"difficulty {key.rsplit('_', 1)[1]}")
    if not levels:
        level_ax.text(0.5, 0.5, "no difficulty column\nin the data", ha="center", va="center")
    level_ax.set_title("rollout accuracy by difficulty")
    level_ax.set_ylim(0, 1)
    level_ax.set_ylabel("fraction correct")
    reward_ax.plot(*_series(rows, "reward_mean"), marker=".", label="mean total reward")
    reward_ax.set_title("reward")
    held = heldout_key(rows)
    if held:
        budget = held.rsplit("_", 1)[1]
        acc_ax.plot(*_series(rows, held), marker="o", linewidth=2, label=f"held-out (budget {budget})")
    curriculum = " (curriculum: harder over time)" if levels else ""
    acc_ax.plot(*_series(rows, "accuracy"), marker=".", alpha=0.6, label=f"rollout batch{curriculum}")
    acc_ax.set_title("accuracy")
    acc_ax.set_ylim(0, 1)
    len_ax.plot(*_series(rows, "response_len_mean"), marker=".", color="tab:green", label="mean length")
    len_ax.set_title("response length")
    len_ax.set_ylabel("tokens")
    trunc_ax = len_ax.twinx()
    trunc_ax.plot(*_series(rows, "truncation_rate"), linestyle="--", color="tab:red", label="truncation rate")
    trunc_ax.set_ylim(0, 1)
    trunc_ax.set_ylabel("truncation rate")
    for ax in (reward_ax, acc_ax, level_ax, len_ax):
        ax.set_xlabel("RL iteration")
        ax.grid(alpha=0.3)
    reward_ax.set_ylabel("reward")
    acc_ax.set_ylabel("fraction correct")
    reward_ax.legend(loc="best", fontsize="small")
    acc_ax.legend(loc="best", fontsize="small")
    if levels:
        level_ax.legend(loc="best", fontsize="small")
    lines = len_ax.get_lines() + trunc_ax.get_lines()
    len_ax.legend(lines, [line.get_label() for line in lines], loc="best", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
