"""User verifiers: by dotted path and by entry point, from `kvrl verify`, from a config, and sandboxed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from rewards import RewardConfig, Task, UnknownVerifier, VerifierPool, resolve_verifier
from runkit.config import ConfigError, load_config
from tests.helpers import ROOT

PLUGIN = """
import os

def is_yes(prediction, gold):
    return prediction.strip().lower() == "yes" and gold == "y"

def hang(prediction, gold):
    while True:
        pass

def crash(prediction, gold):
    os._exit(3)

def hog(prediction, gold):
    block = bytearray(8 * 1024 * 1024 * 1024)  # over the pool's 1 GiB address-space limit
    return len(block) > 0
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A module `kvrl_test_plugin` plus an installed distribution declaring the entry point `yesno`."""
    (tmp_path / "kvrl_test_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "kvrl_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kvrl-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kvrl.verifiers]\nyesno = kvrl_test_plugin:is_yes\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT)]))
    return tmp_path


def test_resolve_by_path_and_entry_point(plugin_dir):
    assert resolve_verifier("kvrl_test_plugin:is_yes")("yes", "y")
    assert resolve_verifier("yesno")("Yes", "y")
    with pytest.raises(UnknownVerifier, match="installed: yesno"):
        resolve_verifier("nope")
    with pytest.raises(UnknownVerifier, match="has no function 'missing'"):
        resolve_verifier("kvrl_test_plugin:missing")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kvrl", "verify", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.parametrize("name", ["kvrl_test_plugin:is_yes", "yesno"])
def test_kvrl_verify_uses_user_verifier(plugin_dir, name):
    proc = run_cli("--verifier", name, "--answer", "y", "--response", "◁think▷ hmm ◁/think▷ yes")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"correct": True, "extracted": "yes", "truncated": False, "error": None}


def test_kvrl_verify_rejects_unknown_verifier():
    proc = run_cli("--verifier", "no_such_mod:fn", "--answer", "1", "--response", "1")
    assert proc.returncode == 2 and "cannot import module 'no_such_mod'" in proc.stderr


def test_kvrl_verify_jsonl_batch(plugin_dir, tmp_path):
    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        "\n".join(
            [
                json.dumps({"response": r"\boxed{\frac{1}{2}}", "answer": "0.5"}),
                json.dumps({"response": "yes", "answer": "y", "verifier": "yesno"}),
                "not json",
                json.dumps({"response": "3"}),
                json.dumps({"response": "◁think▷ cut", "answer": "3"}),
            ]
        )
        + "\n"
    )
    proc = run_cli("--jsonl", str(cases))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["correct"] for r in rows] == [True, True, False, False, False]
    assert "cases.jsonl:3: not valid JSON" in rows[2]["error"]
    assert "missing key 'answer'" in rows[3]["error"]
    assert rows[4]["truncated"] is True
    assert "verifications/s" in proc.stderr


def test_config_names_user_verifier(plugin_dir, tmp_path):
    cfg_file = tmp_path / "rewards.yaml"
    cfg_file.write_text(
        "verifier: kvrl_test_plugin:is_yes\nworkers: 1\ntimeout_s: 5\nlength:\n  weight: 0.2\n"
    )
    cfg = load_config(RewardConfig, cfg_file)
    assert cfg.length.weight == 0.2
    with cfg.make_pool() as pool:
        (v,) = pool.verify([Task("yes", "y", cfg.verifier)])
    assert v.correct
    entry = load_config(RewardConfig, cfg_file, ["verifier=yesno"])
    assert resolve_verifier(entry.verifier)("yes", "y")
    with pytest.raises(ConfigError, match="unknown verifier 'missing_mod_x'"):
        load_config(RewardConfig, cfg_file, ["verifier=missing_mod_x"])


@pytest.mark.fault
def test_pool_survives_hang_crash_and_memory_hog(plugin_dir):
    with VerifierPool(workers=2, timeout_s=3.0, memory_mb=1024) as pool:
        start = time.monotonic()
        verdicts = pool.verify(
            [
                Task("1", "1", "kvrl_test_plugin:hang"),
                Task("1", "1", "kvrl_test_plugin:crash"),
                Task("1", "1", "kvrl_test_plugin:hog"),
                Task(r"\boxed{9^{9^{9^{9}}}}", "1"),
                Task("(" * 10_000 + ")" * 10_000, "1"),
                Task("7" * 1_000_000, "7"),
                Task("1/2", "0.5"),
            ]
        )
        elapsed = time.monotonic() - start
        hang, crash, hog, tower, nested, digits, good = verdicts
        assert not hang.correct and "timed out after 3 s" in hang.error
        assert not crash.correct and "died (exit code 3)" in crash.error
        assert not hog.correct and "MemoryError" in hog.error
        for v in (tower, nested, digits):
            assert not v.correct and v.error
        assert good.correct
        assert pool.replaced == 2  # the hung and the crashed worker
        assert elapsed < 30
        # replaced workers serve the next batch
        assert [v.correct for v in pool.verify([Task("2", "2"), Task("3", "4")])] == [True, False]


def test_pool_verdicts_keep_task_order():
    tasks = [Task(str(i), str(i if i % 3 else i + 1), "number") for i in range(40)]
    with VerifierPool(workers=2, timeout_s=10) as pool:
        verdicts = pool.verify(tasks)
    assert [v.correct for v in verdicts] == [bool(i % 3) for i in range(40)]
