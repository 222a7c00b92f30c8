"""rewards/ and curriculum/ import without torch, vllm or ray (DESIGN.md layout rule)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", ["rewards", "curriculum"])
def test_package_imports_without_heavy_stacks(package):
    code = (
        f"import {package}, sys; import rewards.verifiers; rewards.resolve_verifier('math'); "
        "import math_verify; "
        "print(','.join(m for m in ('torch', 'vllm', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
