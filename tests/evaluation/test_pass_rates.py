"""`kvrl difficulty`: the job an RL config and flags make, per-problem seeds (fast, no engine), and on the
tiny model pass rates through vLLM + the verifier pool and the easy-to-hack filter (slow)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import ROOT, RecordingLLM, gradient_image


def run(tiny_dir, data, tmp_path, *extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    cmd = [
        sys.executable,
        "-m",
        "kvrl",
        "difficulty",
        "--checkpoint",
        str(tiny_dir),
        "--data",
        str(data),
        "--k",
        "3",
        "--max-tokens",
        "8",
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"problems"')))
    rows = [json.loads(line) for line in Path(summary["out"]).read_text().splitlines()]
    return summary, {r["id"]: r for r in rows}


@pytest.mark.slow
def test_difficulty_column_and_easy_to_hack_filter(tiny_dir, tmp_path):
    (tmp_path / "kvrl_always.py").write_text("def yes(prediction, gold):\n    return True\n")
    gradient_image(60, 40, 1).save(tmp_path / "a.png")
    rows = [
        {"id": "p0", "question": "What is 2+2?", "answer": "31415926535", "difficulty": 0.5},
        {
            "id": "p1",
            "question": "Describe.",
            "answer": "x",
            "images": ["a.png"],
            "verifier": "kvrl_always:yes",
        },
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    summary, by_id = run(tiny_dir, data, tmp_path)
    assert summary["problems"] == 2 and summary["written"] == 2
    assert (
        by_id["p0"]["difficulty"] == 1.0 and by_id["p0"]["pass_rate"] == 0.0
    )  # random model never hits gold
    assert by_id["p1"]["difficulty"] == 0.0  # its verifier accepts every response
    assert by_id["p1"]["images"] == ["a.png"]  # other columns are kept as they were

    # p1 is also "solved" with thinking switched off: the k1.5 filter drops it
    summary, by_id = run(
        tiny_dir, data, tmp_path, "--drop-easy", "2", "--out", str(tmp_path / "filtered.jsonl")
    )
    assert summary["dropped_easy_to_hack"] == 1 and set(by_id) == {"p0"}


# An on-policy RL config (temperature 1, top-p 1: what RL allows without opting into off-policy sampling)
RL_YAML = """
trainer: {seed: 7}
rollout:
  max_model_len: 20480
  sampling: {n: 8, temperature: 1.0, max_tokens: 16384, thinking_budget: 4096}
rewards: {verifier: number}
"""


def job_of(monkeypatch, tmp_path, *argv):
    """The DifficultyJob `kvrl difficulty ARGV` would run (estimate_difficulty replaced by a recorder)."""
    import evaluation.pass_rates
    from kvrl.cli import main

    jobs = []
    monkeypatch.setattr(evaluation.pass_rates, "estimate_difficulty", lambda job: jobs.append(job) or {})
    base = ["difficulty", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(tmp_path / "d.jsonl")]
    assert main([*base, *argv]) == 0
    return jobs[0]


def sources(caplog) -> str:
    """The log line that says where each setting of the job came from."""
    return next(r.getMessage() for r in caplog.records if "max_model_len=" in r.getMessage())


def test_rl_config_gives_lengths_temperature_verifier_and_seed(monkeypatch, tmp_path, caplog):
    (tmp_path / "rl.yaml").write_text(RL_YAML)
    caplog.set_level(logging.INFO, logger="kvrl.cli.difficulty")
    job = job_of(monkeypatch, tmp_path, "--config", str(tmp_path / "rl.yaml"))
    # the RL config's 16K responses in a 20K model length, not 1024 in 4096 (traces cut inside thinking)
    assert (job.max_tokens, job.max_model_len) == (16384, 20480)
    assert (job.temperature, job.top_p, job.verifier, job.seed) == (1.0, 1.0, "number", 7)
    assert (job.k, job.no_think_tries) == (10, 0)  # difficulty's own settings keep their defaults
    logged = sources(caplog)
    for key in ("rollout.sampling.max_tokens", "rollout.max_model_len", "rollout.sampling.temperature"):
        assert f"({key} of {tmp_path / 'rl.yaml'})" in logged, logged


def test_flags_override_the_rl_config(monkeypatch, tmp_path, caplog):
    (tmp_path / "rl.yaml").write_text(RL_YAML)
    caplog.set_level(logging.INFO, logger="kvrl.cli.difficulty")
    job = job_of(
        monkeypatch,
        tmp_path,
        *("--config", str(tmp_path / "rl.yaml"), "--max-tokens", "2048", "--max-model-len", "8192"),
        *("--temperature", "0.7", "--verifier", "exact", "--seed", "3", "--k", "4"),
    )
    got = (job.max_tokens, job.max_model_len, job.temperature, job.verifier, job.seed, job.k)
    assert got == (2048, 8192, 0.7, "exact", 3, 4)
    assert "max_tokens=2048 (flag)" in sources(caplog) and "max_model_len=8192 (flag)" in sources(caplog)


def test_without_config_the_defaults_stay(monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kvrl.cli.difficulty")
    job = job_of(monkeypatch, tmp_path, "--max-tokens", "8")
    got = (job.max_tokens, job.max_model_len, job.temperature, job.top_p, job.verifier, job.seed)
    assert got == (8, 4096, 1.0, 1.0, "math", 0)
    assert "max_model_len=4096 (default)" in sources(caplog)


def test_a3b_config_lengths_reach_the_job():
    from kvrl.cli.difficulty import job_from_settings
    from rl.trainer import RLConfig
    from runkit.config import load_config

    path = ROOT / "configs/kimi-vl-a3b/rl-1x8.yaml"
    rollout = load_config(RLConfig, path).rollout
    job = job_from_settings("ckpt", "d.jsonl", config=path)
    assert (job.max_tokens, job.max_model_len) == (rollout.sampling.max_tokens, rollout.max_model_len)
    assert job.max_tokens > 1024  # the old default cut A3B traces short


@pytest.mark.parametrize(
    ("yaml_text", "extra", "message"),
    [
        (None, [], "does not exist"),  # the config path names the file
        ("rollout: {max_len: 20480}\n", [], "rollout.max_len"),
        ("rollout: {sampling: {max_tokens: many}}\n", [], "rollout.sampling.max_tokens"),
        # 16K new tokens cannot fit in an 8K model length with the prompt
        (RL_YAML, ["--max-model-len", "8192"], "below max_model_len (8192)"),
    ],
)
def test_bad_config_fails_naming_the_file_or_key(monkeypatch, tmp_path, capsys, yaml_text, extra, message):
    import evaluation.pass_rates
    from kvrl.cli import main

    monkeypatch.setattr(evaluation.pass_rates, "estimate_difficulty", lambda job: pytest.fail("must not run"))
    config = tmp_path / "rl.yaml"
    if yaml_text is not None:
        config.write_text(yaml_text)
    argv = ["difficulty", "--checkpoint", "c", "--data", "d.jsonl", "--config", str(config), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvrl difficulty: error:") and message in err, err
    if yaml_text is None:
        assert str(config) in err


def test_problem_seed_is_per_problem_and_per_kind_of_try():
    from evaluation.pass_rates import problem_seed

    seeds = {problem_seed(0, pid, "difficulty") for pid in ("p0", "p1", "p2")}
    assert len(seeds) == 3
    assert problem_seed(0, "p0", "difficulty") == problem_seed(0, "p0", "difficulty")  # of its inputs only
    assert problem_seed(0, "p0", "difficulty") != problem_seed(0, "p0", "no-think")
    assert problem_seed(0, "p0", "difficulty") != problem_seed(1, "p0", "difficulty")


def seeds_by_problem(monkeypatch, tmp_path, rows, name) -> dict:
    """{(problem id, thinking): (seed, n)} of a `kvrl difficulty` run over ``rows`` in that order."""
    import evaluation.pass_rates
    from evaluation.pass_rates import DifficultyJob, estimate_difficulty

    llm = RecordingLLM()
    monkeypatch.setattr(evaluation.pass_rates, "make_llm", lambda cfg: llm)
    monkeypatch.setattr(
        evaluation.pass_rates, "KimiVLProcessor", SimpleNamespace(from_pretrained=lambda path: None)
    )

    # a request is (problem id, thinking), so the recording says whose params were whose
    def make_requests(problems, processor, thinking, source):
        return [(p.id, thinking) for p in problems]

    monkeypatch.setattr(evaluation.pass_rates, "make_requests", make_requests)
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = estimate_difficulty(
        DifficultyJob(checkpoint="ckpt", data=str(data), k=3, no_think_tries=2, seed=5, workers=1)
    )
    assert summary["problems"] == len(rows)
    return {request: (sp.seed, sp.n) for call in llm.calls for request, sp in call}


def test_each_problem_samples_from_its_own_seed_wherever_its_row(monkeypatch, tmp_path):
    rows = [{"id": f"p{i}", "question": f"What is {i}+4?", "answer": str(i + 4)} for i in range(3)]
    forward = seeds_by_problem(monkeypatch, tmp_path, rows, "forward")
    backward = seeds_by_problem(monkeypatch, tmp_path, rows[::-1], "backward")
    assert forward == backward  # a problem's samples do not depend on its row or its neighbours

    thinking = [forward[(f"p{i}", True)] for i in range(3)]
    no_think = [forward[(f"p{i}", False)] for i in range(3)]
    assert [n for _, n in thinking] == [3, 3, 3] and [n for _, n in no_think] == [2, 2, 2]
    seeds = [seed for seed, _ in thinking + no_think]
    assert len(set(seeds)) == 6, seeds  # no two problems, and no two kinds of try, share a stream
