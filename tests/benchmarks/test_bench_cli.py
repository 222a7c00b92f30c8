"""`kvrl bench NAME --quick`: each benchmark runs once at its smallest size and writes a well-formed result
(JSON with benchmark, kvrl, baseline, ratio, unit, the runs, the machine) and a markdown table row.
Benchmarks, not timed tests: no assertion is about speed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

# step: test_step.py
QUICK = ["rollout", "sync", "scale", "longtail", "pipeline", "optim", "replay", "packing"]


@pytest.mark.slow
@pytest.mark.parametrize("name", QUICK)
def test_quick_benchmark_writes_a_well_formed_result(name, tiny_dir, tmp_path):
    out, table = tmp_path / f"{name}.json", tmp_path / "benchmarks.md"
    table.write_text("# Benchmarks\n\nSome prose above the table.\n")
    cmd = [sys.executable, "-m", "kvrl", "bench", name, "--quick", "--repeats", "1"]
    cmd += ["--model", str(tiny_dir), "--out", str(out), "--table", str(table)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == name and result["unit"]
    for key in ("kvrl", "baseline", "ratio"):
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    assert len(result["kvrl_runs"]) == result["repeats"] == 1
    assert result["kvrl_min"] <= result["kvrl"] <= result["kvrl_max"]
    assert result["machine"]["cores"] >= 1 and "torch" in result["machine"]["versions"]
    rows = [
        line for line in table.read_text().splitlines() if line.startswith(f"| {result['date']} | {name} |")
    ]
    assert len(rows) == 1 and f"{result['ratio']:.2f}x" in rows[0]
    assert table.read_text().startswith("# Benchmarks\n\nSome prose above the table.\n")
    assert f"ratio {result['ratio']:.2f}x" in proc.stdout
    if name == "scale":
        assert set(result["phases"]) == {"time_rollout", "time_reward", "time_learn", "time_sync"}
    if name == "sync":
        assert result["params"] > 0 and result["bytes"] >= 4 * result["params"]
        # both paths measured side by side: seconds and each learner rank's extra peak memory
        assert set(result["extra_peak_rank0_mb"]) == {"stream", "object_store"}
        assert [len(r) for r in result["extra_peak_mb"]["stream"]] == [2]  # 1 repeat x 2 ranks
        bounds = result["bounds_mb"]
        assert 0 < bounds["largest_module"] <= bounds["model"] and bounds["bucket"] > 0
        # kvrl plan's formula beside each measured increase (exact RSS): rank 0 of the object-store path
        # holds the host copy, its pickled stream and the stored object, 3 x the model
        assert result["exact_rss"] and set(result["plan_extra_mb"]) == {"stream", "object_store"}
        assert result["plan_extra_mb"]["object_store"][0] == pytest.approx(3 * bounds["model"], rel=1e-3)
        assert all(len(v) == 2 and min(v) > 0 for v in result["measured_vs_plan"].values())
    if name == "packing":  # each side at the setting its validation pass chose, real tokens only
        assert result["workload"] == "longtail" and result["size"].startswith("longtail (8 samples")
        assert result["chosen"] == {"padded_micro_batch_size": 4, "packed_micro_batch_tokens": 512}
        assert set(result["validation_seconds"]) == {"padded 4", "packed 512"}
        assert 0 <= result["padded_share"] < 1
    if name == "longtail":
        policies = {"sync", "divided", "context_aware", "partial", "speculative", "all"}
        assert set(result["policies"]) == policies
        sync, every = result["policies"]["sync"], result["policies"]["all"]
        assert result["ratio"] == pytest.approx(every["throughput"] / sync["throughput"])
        assert sync["drain_s"] == 0  # the synchronous pool finishes every sample in its iteration
        # every policy finishes the same responses (partial rollouts drain what they carry at the end)
        assert {p["finished_samples"] for p in result["policies"].values()} == {sync["finished_samples"]}
        assert "simulation, not a measurement" in result["simulation"]["what"]
        assert math.isfinite(result["simulation"]["ratio"]) and result["simulation"]["ratio"] > 0
        # each side tuned over a grid of the same size on the validation split
        tuning = result["tuning"]
        assert len(tuning["sync_chunk_size"]) == len(tuning["all_segment_tokens"]) >= 2
        assert tuning["sync_chunk_size"][str(tuning["chosen"]["chunk_size"])] == max(
            tuning["sync_chunk_size"].values()
        )
        # what each technique did: the synchronous pool cuts nothing, drafts nothing, carries nothing
        assert set(sync["active"].values()) == {0.0}
        assert every["active"]["partial_spanning_responses"] > 0
        assert result["policies"]["divided"]["active"]["divided_chunked_calls"] > 0
        # the calibration table covers every policy, measured beside simulated
        table = result["simulation"]["cpu_calibration"]["policies"]
        assert set(table) == policies and table["sync"]["measured_ratio"] == 1.0
        assert result["simulation"]["drafter"]["source"] in ("measured", "assumed")
    if name == "optim":
        # one seed at --repeats 1: its curves on both splits, the lr picked on validation, steps on test
        assert result["seeds"] == [0] and result["tuned_on"].startswith("final eval_loss (validation")
        adamw, muon = (result["curves"][k][0] for k in ("adamw", "muon"))
        assert [p["step"] for p in adamw] == [0, 5, 6] == [p["step"] for p in muon]
        assert all(p["eval_loss"] != p["test_loss"] for p in adamw)  # two different splits
        assert result["target_loss"] == [adamw[-1]["test_loss"]]
        assert result["steps_to_target"]["adamw"] == result["baseline_runs"] and result["baseline"] <= 6
        assert result["validation_loss"]["adamw"]["0.003"] == [adamw[-1]["eval_loss"]]
        assert Path(result["plot"]).is_file()
        assert [r["iterations"] for r in result["rl"]["adamw"] + result["rl"]["muon"]] == [2, 2]
    if name == "pipeline":
        sync, pipelined = result["runs"]["sync"], result["runs"]["pipelined"]
        assert sync["staleness"] == [0.0, 0.0, 0.0] and pipelined["staleness"] == [0.0, 1.0, 1.0]
        assert result["seeds"] == [0]  # repeat k trains with the config's seed + k
        assert sync["heldout_accuracy_runs"] == [None] and result["accuracy_gaps"] == []  # no eval when quick
        assert result["ratio"] == pytest.approx(
            pipelined["iterations_per_hour"] / sync["iterations_per_hour"]
        )
        for r in (sync, pipelined):
            assert 0 <= r["idle_rollout"] <= 1 and 0 <= r["idle_learner"] <= 1
    if name == "replay":
        runs = {arm: r[0] for arm, r in result["runs"].items()}
        assert set(runs) == {"fp32", "bf16", "bf16_replay_tis"} and result["seeds"] == [0]
        # kvrl: the replayed runs' mismatch; baseline: bf16 without replay; lower is better
        assert result["kvrl_runs"] == [runs["bf16_replay_tis"]["mismatch_kl"]]
        assert result["baseline_runs"] == [runs["bf16"]["mismatch_kl"]]
        assert result["ratio"] == pytest.approx(result["baseline"] / result["kvrl"])
        # only the bf16 run without replay records routes just to compare them
        assert runs["fp32"]["routing_disagreement"] == {} and runs["fp32"]["mismatch_kl_replay_on"] is None
        assert 0 <= result["routing_disagreement_without_replay"]["layer_0"] < 1
        assert runs["bf16"]["mismatch_kl_replay_on"] > 0 and len(result["same_batch_ratio"]) == 1
        assert runs["bf16_replay_tis"]["mismatch_kl_replay_off"] > 0  # its replay, turned off once
        # every run's last policy evaluated alike, on its own checkpoint
        checkpoints = {r["checkpoint"] for r in runs.values()}
        assert len(checkpoints) == 3 and all(Path(c, "config.json").is_file() for c in checkpoints)
        for arm in runs:
            assert 0 <= result["heldout_accuracy"][arm][0] <= 1
        gap = result["accuracy_gap_replay_tis"]
        assert gap["per_seed"] == [
            result["heldout_accuracy"]["bf16_replay_tis"][0] - result["heldout_accuracy"]["fp32"][0]
        ]
        assert gap["ci95"] == [None, None]  # no interval from one seed


def test_each_benchmark_has_its_own_help(capsys):
    from kvrl.cli import main

    for name, own, other in (
        ("longtail", "rollout without the long tail", "packed RL micro-batches"),
        ("packing", "packed", "rollout without the long tail"),
    ):
        with pytest.raises(SystemExit) as done:
            main(["bench", name, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert (
            f"kvrl bench {name} [-h] [--quick]" in text and own in text.lower() and other not in text.lower()
        )
