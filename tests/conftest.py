"""Shared fixtures: one tiny Kimi-VL checkpoint, one vLLM engine and RL data with a signal per session."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.helpers import ROOT


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def own_ray_clusters():
    """Every Ray the tests start is a new local one (kvrl reads RAY_ADDRESS=local so), never a cluster
    that something else runs on this machine, whose workers would not see the tests' plug-ins."""
    saved = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = "local"
    yield
    if saved is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = saved


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
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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

    saved = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    w = RolloutWorker(EngineConfig(model=str(tiny_dir), max_model_len=512, max_num_seqs=64))
    yield w
    w.shutdown()
    if saved is None:
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    else:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = saved


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
