"""`kvrl bench step` at its smallest size: it completes and returns a well-formed result (both sides' seconds
per iteration, the ratio, kvrl's and TRL's phases). A benchmark, not a timed test: nothing about speed."""

from __future__ import annotations

import json
import math

import pytest

PHASES = {"time_rollout", "time_reward", "time_learn", "time_sync"}


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_quick_step_benchmark_is_well_formed(tiny_dir):
    from benchmarks.step import run

    [r] = run(quick=True, repeats=1, model=str(tiny_dir))
    json.dumps(r)  # the CLI writes it as JSON
    assert r["benchmark"] == "step" and r["unit"] == "s/iteration"
    for key in ("kvrl", "baseline", "ratio"):
        assert _positive(r[key]), (key, r[key])
    assert r["ratio"] == pytest.approx(r["baseline"] / r["kvrl"])
    assert len(r["kvrl_runs"]) == len(r["baseline_runs"]) == r["repeats"] == 1
    assert all(_positive(t) for t in r["kvrl_runs"] + r["baseline_runs"])
    # and kvrl pipelined (trainer.max_staleness=1), against the same TRL runs
    assert len(r["pipelined_runs"]) == 1 and _positive(r["pipelined_runs"][0])
    assert r["pipelined_ratio"] == pytest.approx(r["baseline"] / r["pipelined_runs"][0])
    # kvrl's iteration is timed mark to mark, its logging included: never less than sample-to-eval
    assert r["kvrl_runs"][0] >= r["kvrl_inner_runs"][0] > 0
    assert (r["prompts_per_iteration"], r["samples_per_prompt"], r["max_tokens"]) == (4, 2, 16)
    assert r["optimizer_steps_per_iteration"] == 2 and r["trl_version"]
    # kvrl's phases are parts of its iteration; TRL has no weight sync
    assert set(r["phases"]) == set(r["baseline_phases"]) == PHASES
    assert all(_positive(r["phases"][k]) for k in PHASES)
    assert sum(r["phases"].values()) <= r["kvrl"] * 1.01
    assert _positive(r["baseline_phases"]["time_rollout"]) and r["baseline_phases"]["time_sync"] == 0.0
    # both sides generated: at most prompts x samples x max tokens each
    for tokens in (r["kvrl_tokens"], r["baseline_tokens"]):
        assert len(tokens) == 1 and 0 < tokens[0] <= 4 * 2 * 16
    assert "text-only" in r["inputs"] and "TRL" in r["baseline_description"]
