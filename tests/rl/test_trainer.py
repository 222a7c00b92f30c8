"""`kvrl rl` end to end on the tiny model: whole checkpoints, the in-training curves, SIGTERM while a
checkpoint is written, and an exact resume from what it kept, whose vLLM engines serve that checkpoint as
written; the lr warm-up."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.helpers import assert_nothing_left, kvrl_rl, loads_in_learner, metrics, start_run, wait_until


def problems_at(out, iteration):
    rows = [json.loads(line) for line in (Path(out) / "samples.jsonl").read_text().splitlines()]
    return sorted(r["problem"] for r in rows if r["iteration"] == iteration)


REQUIRED = [
    "iteration",
    "reward_mean",
    "accuracy",
    "response_len_mean",
    "truncation_rate",
    "kl",
    "entropy",
    "time_rollout",
    "time_reward",
    "time_learn",
    "time_sync",
    "rollout_tokens_per_s",
]


# 4 samples per prompt: with 2, all 4 groups agree on the parity verifier about once in 16 iterations,
# and such an iteration has no gradient (loss 0), which would make the resume comparison vacuous.
# reset_optimizer=false: Adam's moments carry over iterations, so they must come back on resume.
# The in-training test-time-scaling curves after every iteration (their own test reads them), on both
# runs: resume must be exact with them too.
RUN = (
    "rollout.sampling.n=4",
    "trainer.reset_optimizer=false",
    "eval.tts_every=1",
    "eval.max_samples=4",
    "eval.budgets=[8,16]",
    "eval.answer_tokens=4",
)


@pytest.fixture(scope="module")
def straight(tiny_dir, tmp_path_factory, signal_data):
    """Three iterations never stopped, in this process: what the stopped and resumed run must match."""
    run = tmp_path_factory.mktemp("straight") / "run"
    return run, kvrl_rl(tiny_dir, run, "trainer.iterations=3", *RUN, data=signal_data)


@pytest.mark.slow
def test_rl_runs_and_writes_whole_checkpoints(straight):
    run, rows = straight
    assert [m["iteration"] for m in rows] == [0, 1, 2]
    for key in REQUIRED:
        assert all(key in m for m in rows), key
    assert (run / "run_info.json").exists() and (run / "wandb").is_dir()
    latest = (run / "checkpoints" / "latest").read_text().strip()
    ckpt = run / "checkpoints" / latest
    assert (
        latest == "iter_00002"
        and (ckpt / "model.safetensors").exists()
        and (ckpt / "trainer_state.json").exists()
        and (ckpt / "learner_state").is_dir()  # DeepSpeed's: optimizer moments, fp32 master weights
    )  # that vLLM serves a checkpoint as written: the resumed run below


@pytest.mark.slow
def test_rl_logs_curves(straight):
    run, rows = straight
    for m in rows:
        assert {"tts/budget_8", "tts/budget_16", "time_eval"} <= set(m)
        assert 0 <= m["tts/budget_8"] <= 1
    curves = [json.loads(line) for line in (run / "tts_curves.jsonl").read_text().splitlines()]
    assert [c["iteration"] for c in curves] == [0, 1, 2]
    for c in curves:
        assert [p["budget"] for p in c["points"]] == [8, 16]
        assert {p["checkpoint"] for p in c["points"]} == {f"iter_{c['iteration']:05d}"}
        assert all(p["problems"] == 4 for p in c["points"])


@pytest.mark.slow
@pytest.mark.fault
def test_sigterm_while_a_checkpoint_is_written_keeps_a_whole_one_and_resume_is_exact(
    tiny_dir, tmp_path, signal_data, straight
):
    """SIGTERM while iteration 1's checkpoint is written: the run stops with a whole checkpoint (the one
    before, or this one if its rename came first); resumed from it, the run trains exactly as the
    straight one (the same sampler draws, optimizer steps, losses and KL)."""
    run, log = tmp_path / "run", tmp_path / "rl.log"
    proc, marker = start_run("rl", tiny_dir, run, log, "trainer.iterations=3", *RUN, data=signal_data)
    ckpts = run / "checkpoints"
    wait_until(lambda: any(ckpts.glob("iter_00001.partial*")), proc, log, poll_s=0.002)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 1
    text = log.read_text()
    assert "kvrl rl: stopped: SIGTERM received. The last checkpoint is" in text, text[-3000:]
    assert_nothing_left(marker)
    kept = (ckpts / "latest").read_text().strip()
    assert kept in ("iter_00000", "iter_00001")
    loads_in_learner(ckpts / kept)

    proc, marker = start_run(
        "rl", tiny_dir, run, log, "trainer.iterations=3", *RUN, f"trainer.resume={run}", data=signal_data
    )
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert_nothing_left(marker)
    assert not list(ckpts.glob("*.partial*"))
    resumed = metrics(run)
    assert [m["iteration"] for m in resumed] == [0, 1, 2]  # each once: rows after the checkpoint redone
    # The resumed run's vLLM engines served the kept checkpoint as written: their log-probs of what they
    # sampled are the learners' (loaded from DeepSpeed's state), before any weight sync.
    assert f"resuming from {ckpts / kept}" in log.read_text()
    first = resumed[int(kept.removeprefix("iter_")) + 1]
    assert first["response_len_mean"] > 0 and first["rollout_learner_logprob_gap_max"] < 1e-3, first
    straight_run, expected = straight
    assert problems_at(straight_run, 2) == problems_at(run, 2)  # same sampler draws
    assert expected[2]["step"] == resumed[2]["step"] == 12  # 2 passes x 2 optimizer steps per iteration
    shown = ("iteration", "loss", "kl", "reward_mean", "accuracy", "truncation_rate")
    # the comparison below is not between zeros
    assert all(m["loss"] != 0 and m["kl"] > 0 for m in expected), [{k: m[k] for k in shown} for m in expected]
    for key in ("loss", "reward_mean", "kl", "response_len_mean", "entropy"):
        assert abs(expected[2][key] - resumed[2][key]) <= 1e-5, (key, expected[2][key], resumed[2][key])


def test_lr_warms_up_linearly_over_optimizer_steps():
    from types import SimpleNamespace

    from rl.trainer import RLConfig, Trainer

    cfg = RLConfig(model="unused")
    cfg.learner.lr, cfg.learner.warmup_steps = 3e-4, 10
    # step s (0-based, counted over iterations) gets lr * (s + 1) / 10, then lr: 3e-5, 6e-5, ... 3e-4
    at = SimpleNamespace(cfg=cfg, step=0)
    assert Trainer.lr(at, 0) == pytest.approx(3e-5) and Trainer.lr(at, 1) == pytest.approx(6e-5)
    at.step = 8
    assert Trainer.lr(at, 0) == pytest.approx(2.7e-4) and Trainer.lr(at, 1) == pytest.approx(3e-4)
    at.step = 50
    assert Trainer.lr(at, 0) == pytest.approx(3e-4)
    cfg.learner.warmup_steps = 0
    assert Trainer.lr(SimpleNamespace(cfg=cfg, step=0), 0) == 3e-4
