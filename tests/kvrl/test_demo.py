"""`kvrl demo`: the quick profile end to end (every stage for real), and the stage plumbing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kvrl.cli.demo import format_demo_summary
from kvrl.demo import (
    LEARNING_CHECKS,
    PROFILES,
    DemoError,
    DemoPaths,
    DemoState,
    last_progress,
    load_profiles,
    run_stage,
    summarize,
)


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_writes_a_well_formed_summary(tmp_path):
    out = tmp_path / "demo"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "kvrl", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    print(proc.stdout)
    print(f"QUICK DEMO WALL {wall:.0f} s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    budgets = [str(b) for b in PROFILES["quick"].budgets]
    assert set(summary["tts"]) == {"sft", "rl"}
    for curve in summary["tts"].values():
        assert list(curve) == budgets and all(0.0 <= a <= 1.0 for a in curve.values())
    assert summary["sft_accuracy"] == summary["tts"]["sft"][budgets[-1]]
    assert summary["rl_accuracy"] == summary["tts"]["rl"][budgets[-1]]
    greedy = json.loads((out / "greedy" / "tts.json").read_text())
    assert greedy["temperature"] == 0.0 and greedy["samples"] == 1
    by_name = {Path(p["checkpoint"]).name: p for p in greedy["points"]}
    assert summary["sft_greedy_accuracy"] == by_name["sft"]["accuracy"]
    assert summary["rl_greedy_accuracy"] == by_name["rl"]["accuracy"]
    assert set(summary["checks"]) == {
        "sft_accuracy_at_least",
        "rl_gain_at_least",
        "rl_greedy_gain_at_least",
        "rl_tts_rise_at_least",
    }
    stages = PROFILES["quick"].stages
    assert "rl_nolength" not in stages and "length_reward" not in summary
    assert set(summary["wall_s"]) == {*stages, "total"} and all(v > 0 for v in summary["wall_s"].values())
    assert summary["rl_iterations"] == PROFILES["quick"].rl_iterations
    for name in ("rl_training.png", "tts.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every stage on the real path left its own record: a wandb offline run, a checkpoint, a log.
    assert list((out / "rl" / "wandb").glob("offline-run-*"))
    # `kvrl rl` from the SFT stage's checkpoint: its vLLM engines load it and every iteration samples
    rl_info = json.loads((out / "rl" / "run_info.json").read_text())
    assert Path(rl_info["config"]["model"]) == out / "checkpoints" / "sft"
    rl_rows = [json.loads(line) for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rl_rows] == list(range(PROFILES["quick"].rl_iterations))
    assert all(r["response_len_mean"] > 0 for r in rl_rows)
    assert (out / "checkpoints" / "rl" / "config.json").exists()
    rows = [json.loads(line) for line in (out / "data" / "rl_train.jsonl").read_text().splitlines()]
    assert len(rows) == PROFILES["quick"].rl_pool and all(0.0 <= r["difficulty"] <= 1.0 for r in rows)
    assert all((out / "logs" / f"{s}.log").exists() for s in stages)
    assert "held-out accuracy" in proc.stdout and "sft_accuracy" in proc.stdout
    # Re-running the same command finds every stage done and only rewrites the summary.
    again = subprocess.run(
        [sys.executable, "-m", "kvrl", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["wall_s"] == summary["wall_s"]


def test_a_failing_stage_names_itself_its_command_and_its_log(tmp_path):
    log_path = tmp_path / "logs" / "rl.log"
    with pytest.raises(DemoError) as err:
        run_stage("rl", ["rl", "--config", str(tmp_path / "missing.yaml")], log_path)
    message = str(err.value)
    assert "stage rl failed (exit 2)" in message and "missing.yaml" in message
    assert "does not exist" in message  # the tail of the stage's own log
    assert log_path.read_text().startswith("$ kvrl rl --config")


def test_state_refuses_foreign_dirs_and_other_profiles(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a kvrl demo run"):
        DemoState(foreign, PROFILES["quick"])
    state = DemoState(tmp_path / "run", PROFILES["quick"])
    state.finish("model", 1.5)
    assert DemoState(tmp_path / "run", PROFILES["quick"]).done == {"model": 1.5}
    with pytest.raises(FileExistsError, match="other settings"):
        DemoState(tmp_path / "run", PROFILES["full"])


def test_summary_table_shows_every_number():
    summary = {
        "profile": "full",
        "heldout_problems": 256,
        "samples_per_problem": 4,
        "temperature": 1.0,
        "accuracy_budget": 192,
        "sft_accuracy": 0.3,
        "rl_accuracy": 0.41,
        "sft_greedy_accuracy": 0.25,
        "rl_greedy_accuracy": 0.625,
        "mean_thinking_tokens": {"sft": 61.25, "rl": 98.5},
        "tts": {"sft": {"32": 0.0, "192": 0.3}, "rl": {"32": 0.01, "192": 0.41}},
        "wall_s": {"sft": 330.0, "total": 1190.5},
        "checks": {"rl_gain_at_least": {"bar": 0.08, "value": 0.11, "passed": True}},
    }
    text = format_demo_summary(summary)
    needles = ("5 min 30.0 s", "19 min 50.5 s", "0.410", "0.010", "pass  rl gain at least 0.08: +0.110")
    for needle in (*needles, "sft 0.250, rl 0.625", "sft 61.2, rl 98.5"):
        assert needle in text, (needle, text)


def test_stage_progress_reads_the_outermost_bar(tmp_path):
    log_path = tmp_path / "rl.log"
    log_path.write_text(
        "$ kvrl rl --config c.yaml\nLoading weights: 100%|██████████| 62/62 [00:00<00:00]\n"
        "RL iterations:  10%|█         | 4/40 [00:52<07:50, 13.1s/it]\n"
        "iteration 4:  67%|██████▋   | 4/6 [00:07<00:03,  1.9s/phase, eval]\r"
        "iteration 4:  83%|████████▎ | 5/6 [00:08<00:01,  1.9s/phase, checkpoint]\r"
    )
    assert last_progress(log_path) == "RL iterations 10% 4/40"
    assert last_progress(tmp_path / "missing.log") is None


def _eval_output(path: Path, temperature: float, points: dict[str, dict[int, tuple[float, float]]]) -> None:
    """A ``kvrl eval tts`` tts.json: ``points[checkpoint][budget] = (accuracy, mean thinking tokens)``;
    each 95% interval is the accuracy +- 0.015."""
    rows = [
        {
            "checkpoint": f"/x/checkpoints/{name}",
            "budget": b,
            "accuracy": acc,
            "ci_low": acc - 0.015,
            "ci_high": acc + 0.015,
            "mean_thinking_tokens": tokens,
        }
        for name, curve in points.items()
        for b, (acc, tokens) in curve.items()
    ]
    path.mkdir(parents=True)
    (path / "tts.json").write_text(json.dumps({"temperature": temperature, "points": rows}))


def test_length_profile_compares_thinking_tokens_and_accuracy_with_and_without_the_length_reward(tmp_path):
    p = replace(PROFILES["length"], budgets=[32, 288])
    paths = DemoPaths(tmp_path)
    _eval_output(
        paths.tts,
        1.0,
        {
            "sft": {32: (0.05, 20.0), 288: (0.30, 80.0)},
            "rl": {32: (0.0, 30.0), 288: (0.555, 93.0)},
            # 4 samples a problem: 4.5 points more accurate and 59% longer without the length reward
            "rl_nolength": {32: (0.0, 31.0), 288: (0.60, 148.0)},
        },
    )
    (paths.tts / "tts.png").write_bytes(b"png")
    _eval_output(paths.length_eval, 1.0, {"rl": {288: (0.555, 91.0)}, "rl_nolength": {288: (0.56, 130.0)}})
    _eval_output(
        paths.greedy,
        0.0,
        {n: {288: (a, 100.0)} for n, a in (("sft", 0.2), ("rl", 0.6), ("rl_nolength", 0.62))},
    )
    paths.rl.mkdir()
    (paths.rl / "metrics.jsonl").write_text(
        json.dumps({"iteration": 0, "reward_mean": 0.5, "accuracy": 0.5, "response_len_mean": 90.0}) + "\n"
    )
    s = summarize(p, paths, {stage: 1.0 for stage in p.stages}, {})
    assert (s["sft_accuracy"], s["rl_accuracy"], s["sft_greedy_accuracy"], s["rl_greedy_accuracy"]) == (
        0.30,
        0.555,
        0.2,
        0.6,
    )
    # The comparison is the length_eval stage's (16 samples a problem), not the 4-sample curves'.
    lr = s["length_reward"]
    assert lr["samples_per_problem"] == 16
    assert lr["mean_thinking_tokens"] == {"with": 91.0, "without": 130.0}
    assert lr["shorter"] == pytest.approx(0.3)  # 1 - 91 / 130
    assert lr["accuracy"] == {"with": 0.555, "without": 0.56}
    assert lr["accuracy_ci95"]["without"] == pytest.approx([0.545, 0.575])  # 0.56 -+ 0.015
    assert lr["greedy_accuracy"] == {"with": 0.6, "without": 0.62}
    checks = s["checks"]
    # Without a shortcut to leave, the profile is not judged by RL's gains (full's checks), only by a
    # fair start, the rising curve and the length reward.
    assert set(checks) == {
        "sft_accuracy_at_least",
        "rl_tts_rise_at_least",
        "length_reward_shorter_at_least",
        "length_reward_accuracy_cost_at_most",
    }
    assert checks["rl_tts_rise_at_least"]["value"] == pytest.approx(0.555)  # 0.555 - 0.0
    full = summarize(replace(p, checks=list(LEARNING_CHECKS)), paths, {stage: 1.0 for stage in p.stages}, {})
    assert full["checks"]["rl_gain_at_least"]["value"] == pytest.approx(0.255)  # 0.555 - 0.30
    assert full["checks"]["rl_greedy_gain_at_least"]["value"] == pytest.approx(0.4)  # 0.6 - 0.2
    assert checks["length_reward_shorter_at_least"]["passed"]  # 0.3 >= 0.20
    cost = checks["length_reward_accuracy_cost_at_most"]
    assert cost["value"] == pytest.approx(0.005) and cost["passed"]  # 0.56 - 0.555 <= 0.01
    assert s["wall_s"]["total"] == len(p.stages) == 9
    text = format_demo_summary(s)
    assert (
        "256 problems x 16 samples: thinking tokens 91.0 with / 130.0 without, accuracy 0.555 / 0.560" in text
    ), text
    # 2 points lower with the length reward than without is a failed check, not a pass.
    doc = json.loads((paths.length_eval / "tts.json").read_text())
    for point in doc["points"]:
        if point["checkpoint"].endswith("rl_nolength"):
            point["accuracy"] = 0.575
    (paths.length_eval / "tts.json").write_text(json.dumps(doc))
    cost = summarize(p, paths, {stage: 1.0 for stage in p.stages}, {})["checks"][
        "length_reward_accuracy_cost_at_most"
    ]
    assert cost["value"] == pytest.approx(0.02) and not cost["passed"]


def test_each_profiles_longest_sft_trace_fits_its_max_length(tmp_path, tiny_dir):
    """The SFT stage stops on a conversation over ``data.max_length``: the longest one synth can write
    for a profile (level 3, one kind of cell everywhere, every recheck) must fit."""
    from corpus.synth import COLOURS, MAX_RECHECKS, SynthProblem
    from kimivl import KimiVLProcessor
    from kvrl.demo import sft_config
    from sft.data import load_conversations
    from sft.format import encode

    processor = KimiVLProcessor.from_pretrained(tiny_dir)
    for p in PROFILES.values():
        max_length = sft_config(p, DemoPaths(tmp_path))["data"]["max_length"]
        longest = 0
        for colour in [*COLOURS, None]:  # "empty" is a word of its own in the trace
            problem = SynthProblem("worst", 3, [[colour] * 3 for _ in range(3)], k=4, m=5)
            problem.render().save(tmp_path / "worst.png")
            user = [{"type": "image"}, {"type": "text", "text": problem.question()}]
            reply = problem.response(rechecks=MAX_RECHECKS if p.recheck else 0)
            row = {
                "id": "worst",
                "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
                "images": ["worst.png"],
            }
            (tmp_path / "sft.jsonl").write_text(json.dumps(row) + "\n")
            (conv,) = load_conversations(tmp_path / "sft.jsonl").conversations
            longest = max(longest, len(encode(processor, conv)))
        assert longest <= max_length, (p.name, longest, max_length)


def test_every_profiles_stage_configs_load_with_its_optimizer(tmp_path):
    """Each profile's SFT and RL configs are valid stage configs, and both stages train with the
    profile's ``optimizer`` (``muon``: Muon in SFT and RL; every other profile AdamW)."""
    from kvrl.demo import rl_config, sft_config
    from rl.trainer import RLConfig
    from runkit.config import build
    from sft.trainer import SFTConfig

    paths = DemoPaths(tmp_path)
    optimizers = {}
    for p in PROFILES.values():
        sft = build(SFTConfig, sft_config(p, paths))
        rl = build(RLConfig, rl_config(p, paths))
        optimizers[p.name] = (sft.learner.optimizer, rl.learner.optimizer)
    assert optimizers == {
        "full": ("adamw", "adamw"),
        "length": ("adamw", "adamw"),
        "muon": ("muon", "muon"),
        "quick": ("adamw", "adamw"),
    }


def test_a_profile_naming_an_unknown_check_fails_naming_it(tmp_path):
    from kvrl.demo import CONFIGS
    from runkit.config import ConfigError

    profiles = (CONFIGS / "profiles.yaml").read_text()
    odd = "\nodd:\n  base: full\n  checks: [rl_gain_at_least, accuracy_went_up]\n"
    (tmp_path / "profiles.yaml").write_text(profiles + odd)
    with pytest.raises(ConfigError, match=r"profile odd: .*checks\[1\]: 'accuracy_went_up' is not one of"):
        load_profiles(tmp_path / "profiles.yaml")
