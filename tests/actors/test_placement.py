"""What a driver that joins a running cluster hands its workers: its PYTHONPATH, through the job's
runtime env, unless the job's own runtime env (``ray job submit``'s) ships code or sets PYTHONPATH."""

from __future__ import annotations

import json
import os

from actors.placement import job_runtime_env


def job(runtime_env: dict) -> str:
    return json.dumps({"runtime_env": runtime_env})


def test_the_drivers_pythonpath_goes_to_the_workers_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"PYTHONPATH": os.pathsep.join(["plugins", "", str(tmp_path / "more")])}
    expected = os.pathsep.join([str(tmp_path / "plugins"), str(tmp_path / "more")])
    assert job_runtime_env(env) == {"env_vars": {"PYTHONPATH": expected}}
    # a job config that only marks its workers (as the tests' runs do) still gets it
    marked = {**env, "RAY_JOB_CONFIG_JSON_ENV_VAR": job({"env_vars": {"KVRL_TEST_RUN": "x"}})}
    assert job_runtime_env(marked) == {"env_vars": {"PYTHONPATH": expected}}


def test_nothing_without_a_pythonpath_or_when_the_job_ships_its_own_code():
    assert job_runtime_env({}) is None and job_runtime_env({"PYTHONPATH": ""}) is None
    path = {"PYTHONPATH": "/opt/plugins"}
    for own in ({"working_dir": "."}, {"py_modules": ["/m"]}, {"env_vars": {"PYTHONPATH": "/job"}}):
        assert job_runtime_env({**path, "RAY_JOB_CONFIG_JSON_ENV_VAR": job(own)}) is None, own
