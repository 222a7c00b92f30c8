"""Run tracking: ``metrics.jsonl`` (one object per iteration), wandb (offline by default), sample tables."""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from runkit.files import atomic_write

log = logging.getLogger(__name__)


@dataclass
class TrackingConfig:
    wandb: Literal["offline", "online", "disabled"] = "offline"
    project: str = "kvrl"
    run_name: str | None = None
    samples_every: int = 1  # log a table of sample completions every N iterations (0: never)
    samples_per_table: int = 8


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    return value


def _drop_rows_from(path: Path, iteration: int) -> None:
    """Keep the jsonl rows of iterations before ``iteration`` (and a torn last line goes too)."""
    if not path.exists():
        return
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            keep = json.loads(line)["iteration"] < iteration
        except (ValueError, KeyError, TypeError):
            keep = False  # a line cut short by a kill mid-write
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        log.info("%s: dropped %d rows from iteration %d on (the run resumes there)", path, dropped, iteration)
        atomic_write(path, "".join(line + "\n" for line in kept))


class Tracker:
    """``resume_at``: continuing a run at this iteration; rows it logged at or after it are dropped first
    (written after the checkpoint it resumes from, they would otherwise appear twice)."""

    def __init__(self, run_dir: Path, cfg: TrackingConfig, config: dict, resume_at: int | None = None):
        self.run_dir, self.cfg = Path(run_dir), cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        resume = resume_at is not None
        if resume:
            for path in (self.metrics_path, self.samples_path):
                _drop_rows_from(path, resume_at)
        self._wandb = None
        if cfg.wandb != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(
                project=cfg.project,
                name=cfg.run_name,
                dir=str(self.run_dir),
                mode=cfg.wandb,
                config=config,
                resume="allow" if resume else None,
                id=self._run_id(resume),
            )

    def _run_id(self, resume: bool) -> str | None:
        id_file = self.run_dir / "wandb_run_id"
        if resume and id_file.exists():
            return id_file.read_text().strip()
        run_id = uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        return run_id

    def log(self, metrics: dict[str, Any]) -> None:
        row = {k: _clean(v) for k, v in metrics.items()}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if v is not None}, step=int(metrics["iteration"]))

    def log_samples(self, iteration: int, rows: list[dict[str, Any]]) -> None:
        if not self.cfg.samples_every or iteration % self.cfg.samples_every:
            return
        rows = rows[: self.cfg.samples_per_table]
        with open(self.samples_path, "a") as f:
            for r in rows:
                f.write(json.dumps({"iteration": iteration, **r}, ensure_ascii=False) + "\n")
        if self._wandb is not None and rows:
            import wandb

            columns = list(rows[0])
            table = wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])
            self._wandb.log({"samples": table}, step=iteration)

    def log_line_plot(
        self,
        key: str,
        series: dict[str, tuple[list[float], list[float]]],
        *,
        title: str,
        xname: str,
        step: int | None = None,
    ) -> None:
        """A wandb line plot with one line per entry of ``series`` (name -> (xs, ys)); no-op without wandb."""
        if self._wandb is None or not series:
            return
        import wandb

        names = list(series)
        chart = wandb.plot.line_series(
            xs=[list(series[n][0]) for n in names],
            ys=[list(series[n][1]) for n in names],
            keys=names,
            title=title,
            xname=xname,
        )
        self._wandb.log({key: chart}, step=step)

    def log_table(self, key: str, rows: list[dict[str, Any]], step: int | None = None) -> None:
        """A wandb table of ``rows`` (the columns of the first); no-op without wandb."""
        if self._wandb is None or not rows:
            return
        import wandb

        columns = list(rows[0])
        table = wandb.Table(columns=columns, data=[[_clean(r[c]) for c in columns] for r in rows])
        self._wandb.log({key: table}, step=step)

    def finish(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
