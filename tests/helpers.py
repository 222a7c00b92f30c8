"""What tests share besides fixtures: paths and small builders. Test modules import from here, never
from one another."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
