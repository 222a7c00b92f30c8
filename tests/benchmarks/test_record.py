"""The benchmark record: ratio orientation, the JSON written with --out, and the table rows."""

from __future__ import annotations

import json

import pytest

from benchmarks.common import TABLE_HEADER, record, result
from tests.helpers import ROOT


def test_ratio_is_oriented_so_above_one_means_kvrl_is_better():
    times = result("sync", [1.0, 2.0, 3.0], [10.0, 20.0], "s", higher_is_better=False, size="1x")
    assert (times["kvrl"], times["baseline"], times["ratio"]) == (2.0, 15.0, 7.5)  # medians; 15 / 2
    assert (times["kvrl_min"], times["kvrl_max"], times["repeats"]) == (1.0, 3.0, 3)
    rates = result("rollout", [300.0], [100.0], "tokens/s", higher_is_better=True, size="s")
    assert rates["ratio"] == 3.0  # 300 / 100


def test_record_writes_one_object_with_every_size_and_appends_rows(tmp_path):
    small = result("sync", [1.0], [10.0], "s", higher_is_better=False, size="1x")
    big = result("sync", [4.0], [12.0], "s", higher_is_better=False, size="4x")
    table = tmp_path / "benchmarks.md"
    table.write_text("# Benchmarks\n\nprose\n")
    record([small, big], tmp_path / "sync.json", table)
    data = json.loads((tmp_path / "sync.json").read_text())
    assert {k: data[k] for k in ("benchmark", "kvrl", "baseline", "ratio", "unit")} == {
        "benchmark": "sync",
        "kvrl": 1.0,
        "baseline": 10.0,
        "ratio": 10.0,
        "unit": "s",
    }
    assert [s["size"] for s in data["sizes"]] == ["1x", "4x"] and data["sizes"][1]["ratio"] == 3.0
    record([big], None, table)  # a second run adds rows under the same header
    text = table.read_text()
    assert text.startswith("# Benchmarks\n\nprose\n") and text.count(TABLE_HEADER) == 1
    rows = [line for line in text.splitlines() if "| sync |" in line]
    assert [r.split(" | ")[2] for r in rows] == ["1x", "4x", "4x"] and "10.00x" in rows[0]


def test_every_pipeline_loop_is_a_valid_rl_config_and_gaps_pair_seed_by_seed():
    # the full-size third loop never runs in CI: its overrides must at least load and mean what they say
    from benchmarks.pipeline import LOOPS, _gaps
    from rl.trainer import RLConfig
    from runkit.config import load_config

    tiny = ROOT / "configs" / "tiny" / "rl.yaml"
    loaded = {name: load_config(RLConfig, tiny, overrides).trainer for name, overrides in LOOPS.items()}
    assert [(t.max_staleness, t.stale_reference) for t in loaded.values()] == [
        (0, "learning"),  # the default; a synchronous loop has no stale tokens for it to act on
        (1, "learning"),
        (1, "sampling"),
    ]
    # the headline pair does the same work: both recompute the old log-probs on the learners
    assert loaded["sync"].old_logprobs == loaded["pipelined"].old_logprobs == "learner"
    sync = [{"heldout_accuracy": 0.5}, {"heldout_accuracy": None}, {"heldout_accuracy": 0.25}]
    other = [{"heldout_accuracy": 0.375}, {"heldout_accuracy": 0.5}, {"heldout_accuracy": 0.5}]
    assert _gaps(sync, other) == [-0.125, 0.25]  # 0.375 - 0.5; seed 2 has no sync figure; 0.5 - 0.25


def test_mean_interval_is_students_t_over_the_seeds():
    from benchmarks.common import mean_interval

    mean, low, high = mean_interval([0.01, 0.03, -0.01])
    # mean 0.01, sample sd 0.02, t(0.975, df 2) = 4.303: half-width 4.303 * 0.02 / sqrt(3) = 0.04969
    assert mean == pytest.approx(0.01) and high - mean == pytest.approx(0.04969, abs=1e-5)
    assert mean - low == pytest.approx(high - mean)
    assert mean_interval([0.5]) == (0.5, None, None)
