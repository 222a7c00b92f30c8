"""`kvrl rl` end to end on the tiny model: exact resume, the checkpoint served by vLLM; the lr warm-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, kvrl_rl


def problems_at(out, iteration):
    rows = [json.loads(line) for line in (Path(out) / "samples.jsonl").read_text().splitlines()]
    return sorted(r["problem"] for r in rows if r["iteration"] == iteration)


def assert_loads_in_vllm(ckpt: Path) -> None:
    script = (
        "from rollout.engine import EngineConfig, make_llm\n"
        "from vllm import SamplingParams\n"
        "if __name__ == '__main__':\n"
        f"    llm = make_llm(EngineConfig(model={str(ckpt)!r}, max_model_len=256))\n"
        "    out = llm.generate(['hello'], SamplingParams(max_tokens=4))\n"
        "    print('TOKENS', len(out[0].outputs[0].token_ids))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert "TOKENS 4" in proc.stdout, proc.stderr[-3000:]


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


@pytest.mark.slow
def test_rl_runs_and_resume_is_exact(tiny_dir, tmp_path, signal_data):
    # 4 samples per prompt: with 2, all 4 groups agree on the parity verifier about once in 16 iterations,
    # and such an iteration has no gradient (loss 0), which would make the comparison below vacuous.
    # reset_optimizer=false: Adam's moments carry over iterations, so they must come back on resume.
    n4 = ("rollout.sampling.n=4", "trainer.reset_optimizer=false")
    straight = kvrl_rl(tiny_dir, tmp_path / "a", "trainer.iterations=3", *n4, data=signal_data)
    assert [m["iteration"] for m in straight] == [0, 1, 2]
    for key in REQUIRED:
        assert all(key in m for m in straight), key
    run = tmp_path / "a"
    assert (run / "run_info.json").exists() and (run / "wandb").is_dir()
    latest = (run / "checkpoints" / "latest").read_text().strip()
    ckpt = run / "checkpoints" / latest
    assert (
        latest == "iter_00002"
        and (ckpt / "model.safetensors").exists()
        and (ckpt / "trainer_state.json").exists()
        and (ckpt / "learner_state").is_dir()  # DeepSpeed's: optimizer moments, fp32 master weights
    )

    first = kvrl_rl(tiny_dir, tmp_path / "b", "trainer.iterations=2", *n4, data=signal_data)
    resumed = kvrl_rl(
        tiny_dir,
        tmp_path / "b",
        "trainer.iterations=3",
        *n4,
        f"trainer.resume={tmp_path / 'b'}",
        data=signal_data,
    )
    assert [m["iteration"] for m in first] == [0, 1]
    assert [m["iteration"] for m in resumed] == [0, 1, 2]  # the resumed run appended iteration 2 only
    assert problems_at(tmp_path / "a", 2) == problems_at(tmp_path / "b", 2)  # same sampler draws
    assert straight[2]["step"] == resumed[2]["step"] == 12  # 2 passes x 2 optimizer steps per iteration
    shown = ("iteration", "loss", "kl", "reward_mean", "accuracy", "truncation_rate")
    # the comparison below is not between zeros
    assert all(m["loss"] != 0 and m["kl"] > 0 for m in straight), [{k: m[k] for k in shown} for m in straight]
    for key in ("loss", "reward_mean", "kl", "response_len_mean", "entropy"):
        assert abs(straight[2][key] - resumed[2][key]) <= 1e-5, (key, straight[2][key], resumed[2][key])
    assert_loads_in_vllm(ckpt)  # the RL checkpoint serves in vLLM as written


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
