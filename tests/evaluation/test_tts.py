"""Test-time scaling curves (`kvrl eval tts`, `eval.tts_every` in RL): the math by hand, the two budget
modes on the tiny model with real vLLM, the one-generation truncate path against per-budget
generation, the output files, the CLI end to end. Curves during an RL run: tests/rl/test_trainer.py."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from evaluation.curves import (
    CSV_COLUMNS,
    BudgetCut,
    Outcome,
    curve_point,
    cut_at_budget,
    format_budget,
    parse_budgets,
    pass_at_k,
    wilson_interval,
)
from evaluation.tts import CurveConfig, generate_cuts, score_cuts, write_outputs
from rewards import verify_response
from tests.helpers import ROOT

DATA = ROOT / "configs/tiny/data/rl_train.jsonl"
REQUIRED = ["checkpoint", "budget", "mode", "accuracy", "ci_low", "ci_high", "mean_thinking_tokens"]
REQUIRED.append("truncation_rate")
PLUGIN = "def even(prediction, gold):\n    return len(prediction) % 2 == 0\n"


def even_answer(prediction: str, gold: str) -> bool:
    """A verifier that accepts about half of any answers, so a random model's curves are not all zero."""
    return len(prediction) % 2 == 0


def verify_even(tasks):
    return [verify_response(t.response, t.gold, even_answer) for t in tasks]


# -- math, by hand -------------------------------------------------------------------------------


def test_wilson_interval_by_hand():
    # 8 of 10, z = 1.959964, z² = 3.841459:
    #   denom  = 1 + z²/n = 1.3841459
    #   centre = (0.8 + z²/2n) / denom = (0.8 + 0.1920729) / 1.3841459 = 0.7167402
    #   half   = z / denom * sqrt(0.8*0.2/10 + z²/400) = 1.959964 / 1.3841459 * sqrt(0.0256036)
    #          = 1.4160097 * 0.1600114 = 0.2265777
    #   -> (0.4901625, 0.9433178)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4901625, abs=1e-6) and high == pytest.approx(0.9433178, abs=1e-6)
    # 0 of 10: centre = 0.1920729 / 1.3841459 = 0.1387664 = half (sqrt(z²/400) = z/20) -> (0, 0.2775328)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775328, abs=1e-6))
    # 10 of 10 mirrors 0 of 10
    assert wilson_interval(10, 10) == (pytest.approx(1 - 0.2775328, abs=1e-6), 1.0)
    # 1 of 2: centre = (0.5 + 0.9603647) / 2.9207294 = 0.5, half = 1.959964 / 2.9207294 * sqrt(0.125 +
    #   0.2400912) = 0.6710529 * 0.6042278 = 0.4054688 -> (0.0945312, 0.9054688)
    assert wilson_interval(1, 2) == (pytest.approx(0.0945312, abs=1e-6), pytest.approx(0.9054688, abs=1e-6))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(3, 2)


def test_pass_at_k_by_hand():
    # n=5 samples, c=2 correct, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # k=1 is the fraction correct: 1 - C(3,1)/C(4,1) = 1 - 3/4 = 0.25
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    # n=10, c=3, k=5: 1 - C(7,5)/C(10,5) = 1 - 21/252 = 0.9166667
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0  # fewer than k wrong ones: every draw of k has a correct one
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(2, 1, 3)


def test_cut_at_budget_by_hand():
    close = 9
    stream = [5, 6, 7, close, 1, 2, 3, 4]  # 3 thinking tokens, then ◁/think▷ at index 3, then the answer
    # budget 3: the close is token 4, outside the first 3 -> truncated, 3 thinking tokens, no answer
    assert cut_at_budget(stream, 3, close, 2) == BudgetCut((5, 6, 7), 3, True)
    # budget 4: closed in time; the answer keeps 2 tokens after the close
    assert cut_at_budget(stream, 4, close, 2) == BudgetCut((5, 6, 7, close, 1, 2), 3, False)
    # any larger budget sees the same response (why one generation serves all budgets)
    assert cut_at_budget(stream, 64, close, 2) == cut_at_budget(stream, 4, close, 2)
    # the turn ended (end-of-turn token 0) inside the thinking: 2 thinking tokens, still no answer
    assert cut_at_budget([5, 6, 0], 8, close, 2, ended=True) == BudgetCut((5, 6, 0), 2, True)
    # ... but cut before the end, the end does not count
    assert cut_at_budget([5, 6, 0], 2, close, 2, ended=True) == BudgetCut((5, 6), 2, True)


def test_parse_budgets():
    assert parse_budgets("16,1k,2k,16") == [16, 1024, 2048]
    assert parse_budgets(" 1.5k , 96") == [96, 1536]
    assert [format_budget(b) for b in (96, 1024, 1536, 16384)] == ["96", "1k", "1.5k", "16k"]
    for bad in ("1x", "0", "0.3k", ""):
        with pytest.raises(ValueError):
            parse_budgets(bad)


def test_curve_point_and_output_files(tmp_path):
    # 2 problems x 2 samples at budget 32: correct 3 of 4 = 0.75, thinking (10 + 32 + 20 + 32) / 4 = 23.5,
    # truncated (the two at the cap) 2 of 4 = 0.5
    outcomes = [
        Outcome(0, 10, False, True),
        Outcome(0, 32, True, False),
        Outcome(1, 20, False, True),
        Outcome(1, 32, True, True),  # (a forced answer can be right)
    ]
    point = curve_point("ckpt", 32, "force", outcomes, k=2)
    assert point.accuracy == 0.75 and point.mean_thinking_tokens == 23.5 and point.truncation_rate == 0.5
    # Wilson for 3 of 4: centre (0.75 + 0.4801824) / 1.9603647 = 0.6275273,
    # half 1.959964 / 1.9603647 * sqrt(0.046875 + 0.0600228) = 0.9997956 * 0.3269523 = 0.3268854
    assert (point.ci_low, point.ci_high) == (
        pytest.approx(0.3006418, abs=1e-6),
        pytest.approx(0.9544127, abs=1e-6),
    )
    # pass@2 per problem: each has a correct one among its 2 -> 1.0
    assert point.pass_at_k == 1.0 and point.samples == 2 and point.problems == 2
    with pytest.raises(ValueError, match="responses per problem"):
        curve_point("ckpt", 32, "force", outcomes[:3], k=1)  # problem 1 has fewer responses

    other = curve_point("other/ckpt", 32, "force", outcomes[:2] + outcomes[:2], k=1)
    paths = write_outputs(tmp_path, [point, other], {"mode": "force"}, "title")
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[: len(REQUIRED)] == REQUIRED and tuple(rows[0]) == CSV_COLUMNS
    assert [r["checkpoint"] for r in rows] == ["ckpt", "other/ckpt"]
    assert float(rows[0]["accuracy"]) == 0.75 and float(rows[0]["ci_low"]) == pytest.approx(0.3006418)
    data = json.loads(paths["json"].read_text())
    assert data["mode"] == "force" and [p["accuracy"] for p in data["points"]] == [0.75, 0.5]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the two modes on the tiny model --------------------------------------------------------------

BUDGETS = [4, 8, 16, 32, 64, 128]
ANSWER = 6


@pytest.fixture(scope="module")
def problems():
    from corpus.problems import load_problems

    rows = load_problems(DATA).problems[::2]  # 16 problems, text and image ones
    assert any(p.images for p in rows) and any(not p.images for p in rows)
    return rows


@pytest.fixture(scope="module")
def truncate_runs(worker, problems):
    """One-generation cuts and per-budget ones, same seeds (timing: `kvrl eval tts --compare-naive`).

    Besides the round budgets, the budgets at the edges of observed closes are used: a response that
    closes at position p is truncated under budget p and just in time under p + 1, where its answer
    ends exactly at the last token a per-budget generation has room for (budget + answer_tokens).
    """
    from evaluation.tts import eval_requests

    requests = eval_requests(problems, worker.processor, 3)
    probe = CurveConfig(budgets=[max(BUDGETS)], answer_tokens=ANSWER, samples=2, seed=3)
    long = generate_cuts(requests, worker.generate, probe, worker.think_close)[max(BUDGETS)]
    closes = sorted(
        {c.thinking_tokens for row in long for c in row if not c.truncated and c.thinking_tokens > 4}
    )
    edges = {b for p in closes[:3] for b in (p, p + 1)}
    cfg = CurveConfig(budgets=BUDGETS + sorted(edges), answer_tokens=ANSWER, samples=2, seed=3)
    one = generate_cuts(requests, worker.generate, cfg, worker.think_close)
    naive = generate_cuts(requests, worker.generate, cfg, worker.think_close, naive=True)
    return cfg.budgets, edges, one, naive


@pytest.mark.slow
def test_truncate_one_generation_equals_per_budget(truncate_runs, worker, problems):
    budgets, edges, one, naive = truncate_runs
    assert list(one) == list(naive) == budgets and len(edges) >= 2
    for b in budgets:  # every budget, problem and sample: the same kept tokens, thinking count, truncation
        assert one[b] == naive[b], f"budget {b}"
    cuts = [c for per_budget in one.values() for row in per_budget for c in row]
    assert len(cuts) == len(budgets) * len(problems) * 2
    # not trivially equal: some responses close inside some budgets, some budgets cut others, and
    # some responses close on the last thinking token a budget allows
    assert any(not c.truncated for c in cuts) and any(c.truncated and c.thinking_tokens == 4 for c in cuts)
    assert any(not c.truncated and c.thinking_tokens == b - 1 for b in edges for row in one[b] for c in row)
    closed_late = [
        (i, j)
        for i in range(len(problems))
        for j in range(2)
        if one[4][i][j].truncated and not one[128][i][j].truncated
    ]
    assert closed_late, "no response closes between the smallest and the largest budget"

    records = score_cuts(one, problems, worker.processor.tokenizer, verify_even, "math")
    again = score_cuts(naive, problems, worker.processor.tokenizer, verify_even, "math")
    assert records == again
    by_budget = {b: [r for r in records if r.budget == b] for b in budgets}
    accuracy = [sum(r.correct for r in by_budget[b]) / len(by_budget[b]) for b in budgets]
    assert 0 < accuracy[-1] < 1
    assert accuracy == sorted(accuracy)  # a response right under budget b is right under every larger one
    assert all(not r.correct for r in records if r.truncated)  # truncated scores 0


@pytest.mark.slow
def test_force_always_answers(worker, problems, truncate_runs):
    from evaluation.tts import curve_points, eval_requests

    _, _, truncated_cuts, _ = truncate_runs
    cfg = CurveConfig(budgets=BUDGETS, mode="force", answer_tokens=ANSWER, samples=2, seed=3)
    close = worker.think_close
    cuts = generate_cuts(eval_requests(problems, worker.processor, 3), worker.generate, cfg, close)
    ended_inside = forced_at_cap = 0
    for b, per_problem in cuts.items():
        for i, row in enumerate(per_problem):
            for j, cut in enumerate(row):
                ids = cut.token_ids
                assert close in ids, f"budget {b}, problem {i}, sample {j}: a response without ◁/think▷"
                p = ids.index(close)
                assert p == cut.thinking_tokens <= b
                assert 1 <= len(ids) - p - 1 <= ANSWER  # an answer of 1..answer_tokens tokens after it
                # Phase one of budget forcing is the same seeded stream as the one truncate generation:
                # the same thinking length and the same truncation for every budget, problem and sample.
                same = truncated_cuts[b][i][j]
                assert (same.thinking_tokens, same.truncated) == (cut.thinking_tokens, cut.truncated)
                assert ids[:p] == same.token_ids[:p]
                forced_at_cap += cut.truncated and p == b
                ended_inside += cut.truncated and p < b  # the model ended its turn while thinking
    assert forced_at_cap and ended_inside  # both forcing paths were exercised
    records = score_cuts(cuts, problems, worker.processor.tokenizer, verify_even, "math")
    assert any(r.correct and r.truncated for r in records)  # forced answers are scored, not zeroed
    points = curve_points(records, cfg, "tiny")
    assert [p.budget for p in points] == BUDGETS and all(p.mode == "force" for p in points)


# -- the CLI and RL ---------------------------------------------------------------------------------


def run_cli(*args, cwd=ROOT, env=None):
    return subprocess.run(
        [sys.executable, "-m", "kvrl", "eval", "tts", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
        env=env,
    )


def test_cli_errors_name_the_flag(tmp_path, tiny_dir, capsys):
    """Bad flags fail before any engine starts, naming the flag."""
    from kvrl.cli import main

    args = ["eval", "tts", "--checkpoint", str(tiny_dir), "--data", str(DATA)]
    for argv, message in [
        (["eval", "tts", "--checkpoint", str(tmp_path / "nope"), "--data", str(DATA)], "--checkpoint: "),
        ([*args, "--budgets", "16,1x"], "--budgets: '1x' is not a token count"),
        ([*args, "--k", "2", "--samples", "1"], "need 1 <= k <= samples"),
        ([*args, "--mode", "force", "--compare-naive"], "--compare-naive: only --mode truncate"),
    ]:
        assert main(argv) == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_cli_end_to_end(tiny_dir, tmp_path):
    from kimivl.tiny import make_tiny

    other = make_tiny(tmp_path / "other", seed=1)
    (tmp_path / "kvrl_tts_plugin.py").write_text(PLUGIN)
    data = tmp_path / "data.jsonl"
    rows = [json.loads(line) for line in DATA.read_text().splitlines()][:6]
    data.write_text("".join(json.dumps({**r, "verifier": "kvrl_tts_plugin:even"}) + "\n" for r in rows))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    proc = run_cli(
        *("--checkpoint", str(tiny_dir), "--checkpoint", str(other), "--data", str(data)),
        *("--budgets", "8,16,32", "--answer-tokens", "8", "--samples", "2", "--k", "2"),
        *("--out", str(out), "--compare-naive"),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "curves identical" in proc.stdout and "DIFFER" not in proc.stdout
    assert "budget" in proc.stdout and "wrote" in proc.stdout
    with open(out / "tts.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == CSV_COLUMNS
    assert [(r["checkpoint"], int(r["budget"])) for r in table] == [
        (str(c), b) for c in (tiny_dir, other) for b in (8, 16, 32)
    ]
    for r in table:
        assert r["mode"] == "truncate" and r["k"] == "2" and r["problems"] == "6"
        assert 0 <= float(r["ci_low"]) <= float(r["accuracy"]) <= float(r["ci_high"]) <= 1
        assert 0 <= float(r["truncation_rate"]) <= 1 and float(r["mean_thinking_tokens"]) <= int(r["budget"])
    meta = json.loads((out / "tts.json").read_text())
    assert len(meta["points"]) == 6 and meta["points"][0]["accuracy"] == float(table[0]["accuracy"])
    assert all(t["naive_matches"] for t in meta["timing"])
    assert (out / "tts.png").stat().st_size > 10_000
    assert list((out / "wandb").glob("offline-run-*"))


def test_eval_budgets_must_fit_the_engine(tiny_dir, tmp_path):
    from rl.trainer import RLConfig, Trainer
    from runkit.config import load_config

    overrides = [
        f"model={tiny_dir}",
        f"trainer.output_dir={tmp_path / 'run'}",
        f"data.path={DATA}",
        "tracking.wandb=disabled",
        "eval.tts_every=1",
        "eval.budgets=[16,2048]",
    ]
    cfg = load_config(RLConfig, ROOT / "configs/tiny/rl.yaml", overrides)
    with pytest.raises(ValueError, match=r"eval.budgets: .* rollout.max_model_len is 1024"):
        Trainer(cfg)
