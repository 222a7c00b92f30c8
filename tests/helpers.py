"""What tests share besides fixtures: paths, small builders and running ``kvrl`` in a subprocess. Test
modules import from here, never from one another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import psutil
import torch
from PIL import Image

from learner.packing import SFTExample

ROOT = Path(__file__).resolve().parents[1]  # the repository

# A smaller tiny RL run: fewer prompts and samples, short responses.
RL_FAST = [
    "trainer.prompts_per_iteration=4",
    "rollout.sampling.n=2",
    "rollout.sampling.max_tokens=16",
    "rollout.chunk_size=8",
    "tracking.wandb=offline",
]


def gradient_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic RGB image with structure (so features differ between patches)."""
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(height, width, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


def sft_rows() -> list[list[SFTExample]]:
    """4 packed rows with different target counts (rank 0 gets rows 0 and 2, rank 1 rows 1 and 3)."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for r, sizes in enumerate([(9, 5), (14,), (6, 6, 4), (11,)]):
        row = []
        for n in sizes:
            ids = torch.randint(10, 200, (n,), generator=g).tolist()
            mask = [0] * (n // 3) + [1] * (n - n // 3)
            row.append(SFTExample(ids, mask, id=f"r{r}-{n}"))
        rows.append(row)
    return rows


def kvrl(*args: str, pythonpath: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m kvrl ARGS`` from the repository root; fails the test (with its stderr) unless it
    exits 0."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in (ROOT, pythonpath) if p))
    cmd = [sys.executable, "-m", "kvrl", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def kvrl_rl(tiny_dir, out, *overrides, data=None):
    data_path = data / "train.jsonl" if data else ROOT / "configs/tiny/data/rl_train.jsonl"
    config = str(ROOT / "configs/tiny/rl.yaml")
    cmd = [
        sys.executable,
        "-m",
        "kvrl",
        "rl",
        "--config",
        config,
        f"model={tiny_dir}",
        f"trainer.output_dir={out}",
        f"data.path={data_path}",
        *RL_FAST,
        *overrides,
    ]
    pythonpath = os.pathsep.join([str(ROOT)] + ([str(data)] if data else []))
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


MARK = "KVRL_TEST_RUN"  # every process a run starts inherits it: how leftovers are found


def start_run(
    command: str,
    tiny_dir,
    run: Path,
    log: Path,
    *overrides,
    fast: bool = True,
    env: dict | None = None,
    data: Path | None = None,
) -> tuple[subprocess.Popen, str]:
    """``kvrl rl`` or ``kvrl sft`` on configs/tiny/<command>.yaml in the background (RL smaller with
    ``fast``), output to ``log``; returns the process and the marker its processes (and Ray's) carry in
    their environment. ``data``: a folder with ``train.jsonl`` and the verifier module its rows name."""
    marker = uuid.uuid4().hex
    cmd = [
        sys.executable, "-m", "kvrl", command, "--config", str(ROOT / f"configs/tiny/{command}.yaml"),
        f"model={tiny_dir}", f"trainer.output_dir={run}",
        *(RL_FAST if fast and command == "rl" else []),
        *([f"data.path={data / 'train.jsonl'}"] if data else []), *overrides,
    ]  # fmt: skip
    pythonpath = os.pathsep.join(str(p) for p in (ROOT, data) if p)
    env = {**os.environ, **(env or {}), MARK: marker, "PYTHONPATH": pythonpath}
    with open(log, "a") as out:  # a file, not a pipe: a full pipe would block the run
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, marker


def marked(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARK) == marker:
                found.append(p)
        except psutil.Error:
            continue
    return found


def assert_nothing_left(marker: str, grace_s: float = 30.0) -> None:
    deadline = time.monotonic() + grace_s
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = []
    for p in marked(marker):
        try:
            left.append((p.pid, " ".join(p.cmdline())[:120]))
        except psutil.Error:
            continue
    assert not left, f"processes left after the run exited: {left}"


def wait_until(condition, proc: subprocess.Popen, log: Path, timeout_s: float = 600, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, f"the run exited ({proc.returncode}) first:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(poll_s)


class RecordingLLM:
    """Stands in for vllm.LLM: records each request's SamplingParams, answers "4" every time."""

    def __init__(self):
        self.calls = []

    def generate(self, requests, params):
        if not isinstance(params, list):  # one SamplingParams for the whole batch
            params = [params] * len(requests)
        self.calls.append(list(zip(requests, params, strict=True)))
        answer = SimpleNamespace(text="◁think▷◁/think▷4", token_ids=[1, 2, 3], finish_reason="stop")
        return [SimpleNamespace(outputs=[answer] * sp.n) for sp in params]
