"""Shared fixtures: one Ray head (token authentication) that every run joins, one tiny Kimi-VL checkpoint,
one vLLM engine and RL data with a signal per session; a check that no test module leaves actors or
placement groups in the shared cluster."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, RayHead, clear_ray_leftovers, ray_leftovers


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


PLUGIN = "def even_length(prediction, gold):\n    return len(prediction) % 2 == 0\n"


AUTH = {}  # the session's Ray token file ("token") and the variables it replaced ("saved")


def pytest_configure(config):
    """Token authentication for every Ray client of the session, set before any test module imports
    Ray (Ray reads these variables when it loads, so a fixture would be too late for this process)."""
    token = Path(tempfile.mkdtemp(prefix="kvrl-ray-token-")) / "auth_token"
    token.write_text(secrets.token_hex(32))
    AUTH.update(token=token, saved={k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")})
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))


def pytest_unconfigure(config):
    if not AUTH:
        return
    shutil.rmtree(AUTH["token"].parent, ignore_errors=True)
    restore_environ(AUTH["saved"])


def restore_environ(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def shared_ray(tmp_path_factory):
    """One Ray head for the whole session, with token authentication, which the tests and every ``kvrl``
    process they start join (RAY_ADDRESS names it from the first module with a slow test on), instead
    of each starting a Ray of its own. It runs with no PYTHONPATH: a plug-in verifier reaches its
    workers only through the job's runtime env (``actors.placement.job_runtime_env``), as on a real
    cluster. The tests that are about cluster start-up (tests/actors/test_cluster.py) start their own
    heads. The fast tier starts none: none of its tests needs Ray."""
    for attempt in (1, 2):  # a head can time out starting on a loaded machine: one more try
        head = RayHead.start(tmp_path_factory.mktemp("ray-head"), num_cpus=32, token=AUTH["token"])  # logical
        try:
            head.wait_ready()
            break
        except AssertionError:
            head.stop()
            if attempt == 2:
                raise
    saved = {"RAY_ADDRESS": os.environ.get("RAY_ADDRESS")}
    os.environ["RAY_ADDRESS"] = head.address
    try:
        yield head
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        head.stop()
        restore_environ(saved)


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory):
    """A verifier module importable by the driver, Ray actors and their verifier processes."""
    path = tmp_path_factory.mktemp("plugins")
    (path / "kvrl_cycle_plugin.py").write_text(PLUGIN)
    sys.path.insert(0, str(path))
    return path


@pytest.fixture(scope="session")
def ray_driver(shared_ray, plugin_path, signal_data):
    """This pytest process as a driver of the shared cluster (for actor tests and in-process runs); its
    workers import kvrl and the session's plug-ins through the job's runtime env."""
    import ray

    from actors.placement import job_runtime_env

    paths = [str(plugin_path), str(signal_data), str(ROOT)]
    sys.path[:0] = [p for p in paths if p not in sys.path]
    ray.init(address=shared_ray.address, runtime_env=job_runtime_env({"PYTHONPATH": os.pathsep.join(paths)}))
    return ray


@pytest.fixture(scope="module", autouse=True)
def nothing_left_in_the_shared_cluster(request):
    """After each test module with a slow test (where the runs, actors and engines are; its module
    fixtures torn down), no actor or placement group made while it ran is left in the shared cluster;
    those of a driver that just exited get 30 s to go. What is left fails the module's last test and
    is removed, so it cannot fail the modules after it. (Per module, not per test: a module-scoped pool
    that replaces a killed engine keeps the new one.)"""
    selected = [item for item in request.session.items if item.module is request.module]
    if not any(item.get_closest_marker("slow") for item in selected):
        yield
        return
    request.getfixturevalue("ray_driver")  # the shared head, and this process connected to it
    before = ray_leftovers()
    yield
    deadline = time.monotonic() + 30
    left = ray_leftovers(before)
    while any(left) and time.monotonic() < deadline:
        time.sleep(0.5)
        left = ray_leftovers(before)
    if any(left):
        clear_ray_leftovers(*left)
        actors, groups = sorted(left[0]), sorted(left[1])
        pytest.fail(f"left in the shared Ray cluster: actors {actors}, placement groups {groups}")


@pytest.fixture(scope="session")
def process_group():
    """The one-rank process group of in-process ``Learner`` s: DeepSpeed creates it on first use and
    caches its groups, so it lives until the session ends, and is destroyed then."""
    yield
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def single_rank(process_group):
    """The environment of a one-rank process group, for one test module's in-process ``Learner`` s; it
    is restored afterwards, so no rank variables reach later tests or the processes they start."""
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = str(port)
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield
    restore_environ(saved)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from kimivl.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


@pytest.fixture(scope="session")
def llm(tiny_dir):
    from rollout.engine import EngineConfig, make_llm

    engine = make_llm(EngineConfig(model=str(tiny_dir), max_model_len=1024, max_num_seqs=8))
    yield engine
    engine.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def worker(tiny_dir):
    """An in-process rollout worker (vLLM engine) on the tiny model for one test module; the variable it
    sets for in-process engines is restored afterwards. Per module, not per session: in-process engines
    share vLLM's process-wide parallel state, which shutting any engine down destroys (a session worker
    failed with "pipeline model parallel group is not initialized" after another module's engine
    stopped)."""
    from rollout.engine import EngineConfig
    from rollout.worker import RolloutWorker

    saved = {"VLLM_ENABLE_V1_MULTIPROCESSING": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")}
    w = RolloutWorker(EngineConfig(model=str(tiny_dir), max_model_len=512, max_num_seqs=64))
    yield w
    w.shutdown()
    restore_environ(saved)


@pytest.fixture(scope="session")
def signal_data(tmp_path_factory):
    """The tiny RL data with a verifier that accepts about half of any model's answers, so a random
    model's rollouts still carry a learning signal (and the resume comparison is not between zeros)."""
    folder = tmp_path_factory.mktemp("signal")
    (folder / "kvrl_resume_plugin.py").write_text(
        "def even(prediction, gold):\n    return len(prediction) % 2 == 0\n"
    )
    rows = [json.loads(line) for line in (ROOT / "configs/tiny/data/rl_train.jsonl").read_text().splitlines()]
    with open(folder / "train.jsonl", "w") as f:
        for r in rows:
            r["verifier"] = "kvrl_resume_plugin:even"
            r["images"] = [str(ROOT / "configs/tiny/data" / im) for im in r.get("images", [])]
            f.write(json.dumps(r) + "\n")
    return folder


@pytest.fixture
def tiny_trainer(tiny_dir, tmp_path):
    """Build an RL ``Trainer`` with the default config on the tiny model and configs/tiny/data, plus
    ``key=value`` overrides: data, processor and sampler are real, no actor is started (tests hand it
    stand-ins for the groups they exercise)."""
    from rl.trainer import RLConfig, Trainer
    from runkit.config import load_config

    def build(*overrides: str) -> Trainer:
        data = ROOT / "configs/tiny/data/rl_train.jsonl"
        base = [f"model={tiny_dir}", f"data.path={data}", f"trainer.output_dir={tmp_path / 'run'}"]
        return Trainer(load_config(RLConfig, None, [*base, *overrides]))

    return build
