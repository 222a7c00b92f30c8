"""The package layers of DESIGN.md "Layout and layers", checked three ways.

- import-linter's contracts (``[tool.importlinter]`` in pyproject.toml): layers point down, the learner
  rank and the actors never import the drivers, math never imports Ray; every import counts,
  function-level ones included.
- No package holds more than 30% of the non-test lines (a package that holds half the code says nothing).
- ``rewards`` and ``curriculum`` really import without torch, vLLM or Ray, verifiers included.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers import ROOT

MAX_SHARE = 0.30


def test_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "lint-imports is missing: bash scripts/setup.sh installs it (the dev extra)"
    out = subprocess.run([lint], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def package_lines() -> dict[str, int]:
    """Non-blank, non-comment lines of each top-level package import-linter knows."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = {}
    for package in config["root_packages"]:
        files = (ROOT / package).rglob("*.py")
        lines[package] = sum(
            1
            for f in files
            for line in f.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        )
    return lines


def test_no_package_holds_more_than_30_percent_of_the_code():
    lines = package_lines()
    total = sum(lines.values())
    assert total > 5000  # the walk found the code
    shares = {p: n / total for p, n in lines.items()}
    assert max(shares.values()) <= MAX_SHARE, sorted(shares.items(), key=lambda kv: -kv[1])


def test_every_package_is_under_a_contract():
    """A new top-level package must join the layers (else nothing checks what it imports)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(config["root_packages"])


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
