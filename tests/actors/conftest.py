"""A local Ray cluster and the tiny-model actors shared by the actor tests."""

from __future__ import annotations

import os
import sys

import pytest

PLUGIN = "def even_length(prediction, gold):\n    return len(prediction) % 2 == 0\n"


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory):
    """A verifier module importable by the driver, Ray actors and their verifier processes."""
    path = tmp_path_factory.mktemp("plugins")
    (path / "kvrl_cycle_plugin.py").write_text(PLUGIN)
    sys.path.insert(0, str(path))
    return path


@pytest.fixture(scope="session")
def ray_cluster(plugin_path):
    import ray

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    pythonpath = os.pathsep.join([str(plugin_path), root, os.environ.get("PYTHONPATH", "")])
    # Logical CPUs: actors reserve them; the 2 physical cores are shared.
    ray.init(num_cpus=8, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    yield ray
    ray.shutdown()
