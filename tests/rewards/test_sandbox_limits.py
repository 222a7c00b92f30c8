"""Verifier workers have no network and a per-call CPU-time limit (rewards/sandbox.py)."""

from __future__ import annotations

import os
import select
import socket
import time

import pytest

from rewards import RewardConfig, Task, VerifierPool
from runkit.config import ConfigError, load_config
from tests.helpers import ROOT

PLUGIN = """
import socket

def phone_home(prediction, gold):
    # gold carries the port of the test's listening socket
    with socket.create_connection(("127.0.0.1", int(gold)), timeout=2):
        return True

def phone_home_raw(prediction, gold):
    # below socket.create_connection: a plain socket object and connect()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(("127.0.0.1", int(gold)))
    return True

def burn(prediction, gold):
    while True:
        pass
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A module `kvrl_limits_plugin` importable here and in spawned workers (via PYTHONPATH)."""
    (tmp_path / "kvrl_limits_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT)]))
    return tmp_path


@pytest.mark.fault
def test_verifier_cannot_open_a_connection(plugin_dir):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = str(server.getsockname()[1])
        with RewardConfig(workers=1, timeout_s=20).make_pool() as pool:
            assert pool.cpu_time_s == 200  # default: max(60, 10 * timeout_s)
            verdicts = pool.verify(
                [
                    Task("1", port, "kvrl_limits_plugin:phone_home"),
                    Task("1", port, "kvrl_limits_plugin:phone_home_raw"),
                    Task("1/2", "0.5"),  # the guard leaves ordinary verification alone
                ]
            )
        for v in verdicts[:2]:
            assert not v.correct
            assert "network" in v.error.lower() or "connect" in v.error.lower(), v.error
        assert verdicts[2].correct
        # nothing ever reached the listening socket
        readable, _, _ = select.select([server], [], [], 0.5)
        assert readable == [], "a verifier connected to the test's socket"


@pytest.mark.fault
def test_cpu_time_limit_kills_and_replaces_worker(plugin_dir):
    with RewardConfig(workers=1, timeout_s=30, cpu_time_s=1).make_pool() as pool:
        start = time.monotonic()
        burn, after = pool.verify([Task("1", "1", "kvrl_limits_plugin:burn"), Task("2", "2")])
        elapsed = time.monotonic() - start
        assert not burn.correct and "CPU-time limit of 1 s" in burn.error, burn.error
        assert pool.replaced == 1
        assert after.correct  # the replacement served the next task
        assert elapsed < 30  # the CPU limit, not the wall timeout, stopped it
        assert [v.correct for v in pool.verify([Task("3", "3"), Task("3", "4")])] == [True, False]


@pytest.mark.fault
def test_cpu_time_config_is_validated():
    with pytest.raises(ConfigError, match="cpu_time_s must be >= 1"):
        load_config(RewardConfig, None, ["cpu_time_s=0"])
    assert load_config(RewardConfig, None, ["cpu_time_s=5"]).cpu_time_s == 5
    with pytest.raises(ValueError, match="cpu_time_s must be >= 1"):
        VerifierPool(workers=1, cpu_time_s=0)
