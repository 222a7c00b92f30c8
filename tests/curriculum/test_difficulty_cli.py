"""`kvrl difficulty` on the tiny model: pass rates through vLLM + the verifier pool, easy-to-hack filter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import gradient_image

ROOT = Path(__file__).resolve().parents[2]


def run(tiny_dir, data, tmp_path, *extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    cmd = [
        sys.executable,
        "-m",
        "rl.cli",
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
