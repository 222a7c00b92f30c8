"""Soak: 50 iterations of the tiny RL config (at the RL_FAST sizes: 4 prompts x 2 samples x 16 tokens an
iteration, each iteration still sampling, scoring, learning, syncing, logging and checkpointing) with
bad rows in its data and secrets in its environment (the driver's and its workers'). Host memory of the
driver and of every actor stays flat, nothing is left running, no secret is written."""

from __future__ import annotations

import json
import secrets

import pytest

from tests.helpers import ROOT, assert_nothing_left, start_run

ITERATIONS, SETTLED, GROWTH = 50, 5, 1.10
BAD_ROWS = [
    "not json",
    '{"question": "What is 1 + 1?"}',
    '{"question": "What is 1 + 1?", "answer": ""}',
    '{"question": ["q"], "answer": "2"}',
    '{"question": "Which colour?", "answer": "red", "images": ["corrupt.png"]}',
]


@pytest.mark.slow
@pytest.mark.fault
def test_fifty_iterations_hold_memory_flat_and_leave_nothing(tiny_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    rows = []
    for line in (ROOT / "configs/tiny/data/rl_train.jsonl").read_text().splitlines():
        row = json.loads(line)
        row["images"] = [str(ROOT / "configs/tiny/data" / im) for im in row.get("images", [])]
        rows.append(json.dumps(row))
    (data / "train.jsonl").write_text("\n".join(rows[:10] + BAD_ROWS + rows[10:]) + "\n")
    names = ("WANDB_API_KEY", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY")
    secret_env = {name: secrets.token_hex(16) for name in names}

    run, log = tmp_path / "run", tmp_path / "rl.log"
    proc, marker = start_run(
        "rl",
        tiny_dir,
        run,
        log,
        f"trainer.iterations={ITERATIONS}",
        f"data.path={data / 'train.jsonl'}",
        "data.skip_bad_rows=true",
        "tracking.wandb=offline",
        env=secret_env,  # the RL_FAST sizes: every phase of all 50 iterations, on smaller batches
    )
    assert proc.wait(timeout=3600) == 0, log.read_text()[-3000:]
    assert_nothing_left(marker)

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == list(range(ITERATIONS))
    assert all(m["data_rows_skipped"] == len(BAD_ROWS) for m in metrics)
    keys = sorted(k for k in metrics[0] if k.startswith("rss_mb/"))
    assert len(keys) == 1 + 2 + 2 + 1  # driver, 2 engines, 2 learner ranks, the reward actor
    table = [f"| process | RSS at iteration {SETTLED} (MiB) | at the end | growth |", "|---|---|---|---|"]
    grown = []
    for key in keys:
        settled, last = metrics[SETTLED][key], metrics[-1][key]
        name = key.removeprefix("rss_mb/")
        table.append(f"| {name} | {settled:.0f} | {last:.0f} | {last / settled - 1:+.1%} |")
        if last > GROWTH * settled:
            grown.append(key)
    print("\n" + "\n".join(table))  # the soak table (pytest -s shows it)
    assert not grown, "\n".join(table)

    # No secret from the environment in anything the run wrote or printed.
    written = [p for p in run.rglob("*") if p.is_file()] + [log]
    for name, value in secret_env.items():
        leaks = [str(p) for p in written if value.encode() in p.read_bytes()]
        assert not leaks, f"{name} written to {leaks}"
