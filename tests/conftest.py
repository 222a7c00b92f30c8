"""Shared fixtures: one tiny Kimi-VL checkpoint, one vLLM engine and RL data with a signal per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


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
def single_rank():
    """The environment of a one-rank process group in this process, for in-process ``Learner`` s
    (DeepSpeed initializes it once; later learners in the session reuse it)."""
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


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


def gradient_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic RGB image with structure (so features differ between patches)."""
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(height, width, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


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
