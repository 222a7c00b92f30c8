"""Shared fixtures: one tiny Kimi-VL checkpoint and one vLLM engine per test session."""

from __future__ import annotations

import pytest
import torch
from PIL import Image


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
