"""`kvrl sft` through the shared run lifecycle, on the tiny model with Ray and DeepSpeed: a run stopped by
SIGTERM stops cleanly with a resume hint, and resumed from its checkpoint it trains exactly as a run
that was never stopped (optimizer moments, fp32 master weights and the data order all come back)."""

from __future__ import annotations

import signal

import pytest

from tests.helpers import ROOT, assert_nothing_left, kvrl_here, metrics, start_run, wait_until

STEPS = 8
SMALL = [
    f"trainer.max_steps={STEPS}",
    "trainer.save_every=1",
    "trainer.eval_every=0",
    "tracking.wandb=disabled",
]


def losses(run) -> dict[int, float]:
    return {r["iteration"]: r["loss"] for r in metrics(run) if "loss" in r}


@pytest.fixture(scope="module")
def straight(tiny_dir, tmp_path_factory):
    """The same run, never stopped: in this process (its process is not what is tested)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    config = str(ROOT / "configs/tiny/sft.yaml")
    code = kvrl_here("sft", "--config", config, f"model={tiny_dir}", f"trainer.output_dir={run}", *SMALL)
    assert code.returncode == 0, f"kvrl sft exited {code.returncode} (its output is above)"
    return losses(run)


@pytest.mark.slow
@pytest.mark.fault
def test_sigterm_stops_sft_cleanly_and_the_resumed_run_matches_a_straight_one(tiny_dir, tmp_path, straight):
    run, log = tmp_path / "run", tmp_path / "sft.log"
    proc, marker = start_run("sft", tiny_dir, run, log, *SMALL)
    wait_until(lambda: (run / "checkpoints" / "latest").exists(), proc, log, poll_s=0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 1
    text = log.read_text()
    assert "kvrl sft: stopped: SIGTERM received. The last checkpoint is" in text, text[-3000:]
    assert f"continue with trainer.resume={run}" in text
    assert_nothing_left(marker)
    assert not list((run / "checkpoints").glob("*.partial*"))  # whole checkpoints only
    stopped_at = max(losses(run))
    assert stopped_at < STEPS, "the run ended before SIGTERM arrived: nothing left to resume"

    proc, marker = start_run("sft", tiny_dir, run, log, *SMALL, f"trainer.resume={run}")
    assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    assert_nothing_left(marker)
    resumed = losses(run)
    assert sorted(resumed) == list(range(1, STEPS + 1))  # every step once: rows after the checkpoint redone
    assert [r["iteration"] for r in metrics(run)].count(0) == 1
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-5), (step, resumed, straight)
    assert (run / "final" / "model.safetensors").exists()
