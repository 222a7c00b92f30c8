"""The shared Ray cluster, as the actor tests name it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster(ray_driver):
    return ray_driver
