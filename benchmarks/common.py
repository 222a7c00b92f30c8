"""What every benchmark shares: repeats and their summary, the result record, machine facts, the table.

A result is one JSON object: ``benchmark``, ``kvrl``, ``baseline``, ``ratio`` and ``unit`` (medians; the
ratio is oriented so that > 1 means kvrl is better: baseline/kvrl for times, kvrl/baseline for rates),
plus ``kvrl_runs`` / ``baseline_runs`` (every repeat), min/max, the settings and the machine.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runkit.provenance import git_sha, library_versions

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "benchmarks.md"
DEMO_DIR = ROOT / "runs" / "bench" / "demo"
TABLE_HEADER = (
    "| date | benchmark | size | kvrl | baseline | ratio | unit | machine | git |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def summary(runs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs)}


# Student's t quantiles for a two-sided 95% interval, by degrees of freedom (1-10); normal beyond
T_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def mean_interval(values: list[float]) -> tuple[float, float | None, float | None]:
    """The mean of ``values`` (e.g. a difference per seed) and its 95% interval by Student's t;
    no interval from fewer than two values."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    df = len(values) - 1
    half = (T_95[df - 1] if df <= len(T_95) else 1.96) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def tiny_rl(model: str | None, prefix: str) -> list[str]:
    """Overrides of the tiny RL config for a bench's quick size: ``model`` or a fresh tiny model."""
    if model is None:
        import tempfile

        from kimivl.tiny import make_tiny

        model = str(make_tiny(Path(tempfile.mkdtemp(prefix=prefix)), seed=0))
    data = ROOT / "configs" / "tiny" / "data" / "rl_train.jsonl"
    return [
        f"model={model}",
        f"data.path={data}",
        "trainer.prompts_per_iteration=4",
        "tracking.samples_every=0",
    ]


def machine() -> dict[str, Any]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "os": platform.platform(),
        "versions": library_versions(),
    }


def result(
    benchmark: str,
    kvrl_runs: list[float],
    baseline_runs: list[float],
    unit: str,
    *,
    higher_is_better: bool,
    size: str,
    **details: Any,
) -> dict[str, Any]:
    """The record of one benchmark at one size; ``details`` hold its settings and breakdowns."""
    k, b = summary(kvrl_runs), summary(baseline_runs)
    ratio = k["median"] / b["median"] if higher_is_better else b["median"] / k["median"]
    return {
        "benchmark": benchmark,
        "size": size,
        "kvrl": k["median"],
        "baseline": b["median"],
        "ratio": ratio,
        "unit": unit,
        "kvrl_min": k["min"],
        "kvrl_max": k["max"],
        "baseline_min": b["min"],
        "baseline_max": b["max"],
        "kvrl_runs": kvrl_runs,
        "baseline_runs": baseline_runs,
        "repeats": len(kvrl_runs),
        **details,
        "machine": machine(),
        "git_sha": git_sha(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def record(results: list[dict[str, Any]], out: str | Path | None, table: Path | None = TABLE) -> None:
    """Write the results as one JSON object to ``out`` and add a row per result to ``table``.

    With several sizes the object is the first (smallest) one's, with every size under ``sizes``, so the
    top-level ``benchmark, kvrl, baseline, ratio, unit`` are always there.
    """
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = results[0] if len(results) == 1 else {**results[0], "sizes": results}
        out.write_text(json.dumps(payload, indent=2) + "\n")
    if table is None:
        return
    table.parent.mkdir(parents=True, exist_ok=True)
    text = table.read_text() if table.exists() else ""
    if TABLE_HEADER not in text:
        text += ("\n" if text else "") + TABLE_HEADER
    for r in results:
        m = r["machine"]
        where = f"{m['cores']} cores, {m['memory_gib']:g} GiB"
        sha = (r.get("git_sha") or "")[:9]
        text += (
            f"| {r['date']} | {r['benchmark']} | {r['size']} | {r['kvrl']:.4g} | {r['baseline']:.4g} | "
            f"{r['ratio']:.2f}x | {r['unit']} | {where} | {sha} |\n"
        )
    table.write_text(text)
    log.info("added %d row(s) to %s", len(results), table)


def demo_inputs(model: str | None = None, out: Path = DEMO_DIR) -> Path:
    """A ``kvrl demo`` directory with its RL inputs (model, data, SFT checkpoint, RL pool): ``model`` if
    given, else the demo's stages up to ``difficulty`` built into ``out`` once (about 15 minutes)."""
    if model:
        return Path(model)
    if (out / "configs" / "rl.yaml").exists() and (out / "data" / "rl_train.jsonl").exists():
        return out
    log.info("building the demo's SFT checkpoint and RL data in %s (once, about 15 min)", out)
    cmd = [sys.executable, "-m", "kvrl", "demo", "--out", str(out), "--until", "difficulty"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out
