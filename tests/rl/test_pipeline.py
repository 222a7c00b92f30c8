"""Pipelined RL (``trainer.max_staleness: 1``) end to end on the tiny model with Ray, vLLM and DeepSpeed:
each batch after the first is sampled one policy version back, a rollout engine killed while the next
batch is sampled is replaced, and a run stopped by SIGTERM mid-overlap resumes from a checkpoint that
holds the batch sampled ahead, then trains exactly as a run that was never stopped."""

from __future__ import annotations

import json
import signal

import psutil
import pytest

from tests.helpers import assert_nothing_left, marked, metrics, start_run, wait_until

ITERATIONS = 4
# n=4 and no optimizer reset, as in tests/rl/test_trainer.py: losses that are not zero, and Adam's
# moments that must come back on resume
PIPELINED = [
    "trainer.max_staleness=1",
    f"trainer.iterations={ITERATIONS}",
    "rollout.sampling.n=4",
    "trainer.reset_optimizer=false",
    "trainer.save_every=1",
    "tracking.wandb=disabled",
    "eval.tts_every=2",  # held-out curves after iterations 1 and 3, between two overlapped rollouts
]


def ahead_line(iteration: int) -> str:
    return f"sampling iteration {iteration}'s batch ahead"


def rows(run) -> dict[int, dict]:
    return {r["iteration"]: r for r in metrics(run)}


def problems(run) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for line in (run / "samples.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.setdefault(r["iteration"], []).append(r["problem"])
    return {k: sorted(v) for k, v in out.items()}


def kill_rollout_actor(marker: str) -> None:
    actors = [p for p in marked(marker) if "RolloutActor" in " ".join(p.cmdline())]
    assert actors, "no rollout actor found"
    actors[0].kill()
    psutil.wait_procs([actors[0]], timeout=30)


@pytest.fixture(scope="module")
def straight(tiny_dir, tmp_path_factory, signal_data):
    """The pipelined run never stopped; one rollout engine is killed once iteration 2's batch is being
    sampled ahead: the pool replaces it and runs its share again with the same seeds, or, where its
    share was already done, replaces it at the next weight sync."""
    run = tmp_path_factory.mktemp("straight") / "run"
    log = run.parent / "rl.log"
    proc, marker = start_run("rl", tiny_dir, run, log, *PIPELINED, data=signal_data)
    wait_until(lambda: ahead_line(2) in log.read_text(), proc, log, poll_s=0.02)
    kill_rollout_actor(marker)
    assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    assert "died; starting a replacement" in log.read_text()
    assert_nothing_left(marker)
    return run


@pytest.mark.slow
def test_every_batch_after_the_first_is_sampled_one_version_back(straight):
    got = rows(straight)
    assert sorted(got) == list(range(ITERATIONS))
    assert [got[i]["staleness"] for i in range(ITERATIONS)] == [0.0, 1.0, 1.0, 1.0]
    assert all(got[i]["loss"] != 0 and got[i]["kl"] > 0 for i in range(ITERATIONS))
    # the monitor reads the stale batches too: sampled by policy i, scored by policy i + 1, they differ
    assert [got[i]["mismatch_stale_token_share"] for i in range(ITERATIONS)] == [0.0, 1.0, 1.0, 1.0]
    assert min(got[i]["mismatch_kl"] for i in range(1, ITERATIONS)) > 10 * got[0]["mismatch_kl"]
    # each curve measured the weights just synced (policy it + 1), never the engines mid-rollout
    evals = [(i, got[i]["eval_policy"]) for i in range(ITERATIONS) if "eval_policy" in got[i]]
    assert evals == [(1, 2.0), (3, 4.0)]
    assert all(0 <= got[i][k] <= 1 for i in (1, 3) for k in got[i] if k.startswith("tts/budget_"))
    for r in got.values():  # what a user reads to see the overlap
        assert 0.0 <= r["idle_rollout"] <= 1.0 and 0.0 <= r["idle_learner"] <= 1.0
        assert r["time_wait"] >= 0.0


@pytest.mark.slow
@pytest.mark.fault
def test_sigterm_mid_overlap_then_resume_trains_exactly_as_a_straight_run(
    tiny_dir, tmp_path, signal_data, straight
):
    run, log = tmp_path / "run", tmp_path / "rl.log"
    proc, marker = start_run("rl", tiny_dir, run, log, *PIPELINED, data=signal_data)
    # iteration 1 has scored its batch (sampled ahead during iteration 0) and is sampling iteration
    # 2's on the engines while the learners train: stop it there
    wait_until(lambda: ahead_line(2) in log.read_text(), proc, log, poll_s=0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 1
    text = log.read_text()
    assert "kvrl rl: stopped: SIGTERM received. The last checkpoint is" in text, text[-3000:]
    assert_nothing_left(marker)
    assert not list((run / "checkpoints").glob("*.partial*"))
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == "iter_00000", "SIGTERM came after iteration 1's checkpoint: nothing mid-overlap"
    state = json.loads((run / "checkpoints" / latest / "trainer_state.json").read_text())
    ahead = state["ahead"]  # iteration 1's batch, sampled by policy 0 during iteration 0, not learned
    assert (ahead["iteration"], ahead["version"]) == (1, 0) and ahead["groups"]

    proc, marker = start_run("rl", tiny_dir, run, log, *PIPELINED, f"trainer.resume={run}", data=signal_data)
    assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    assert_nothing_left(marker)
    resumed, expected = rows(run), rows(straight)
    assert [r["iteration"] for r in metrics(run)] == list(range(ITERATIONS))  # each once, none lost
    assert problems(run) == problems(straight)  # the same batches, none trained twice
    keys = ("loss", "kl", "reward_mean", "response_len_mean", "entropy", "staleness", "tts/budget_16")
    for it in range(1, ITERATIONS):
        assert ("tts/budget_16" in resumed[it]) == ("tts/budget_16" in expected[it]) == (it % 2 == 1)
        for key in (k for k in keys if k in expected[it]):
            assert resumed[it][key] == pytest.approx(expected[it][key], abs=1e-5), (it, key)
