"""What tests share besides fixtures: paths, small builders and running ``kvrl`` in a subprocess. Test
modules import from here, never from one another."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import psutil
import torch
from PIL import Image

from learner.packing import SFTExample

ROOT = Path(__file__).resolve().parents[1]  # the repository
BIN = Path(sys.executable).parent  # the venv's ray, kvrl

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


def kvrl_here(*args: str, capsys=None) -> subprocess.CompletedProcess:
    """``kvrl ARGS`` through its entry function in this process, as the console script calls it: for
    tests of what a command computes, prints or returns, where the process is not the subject (no
    interpreter start, no second import of torch, and training runs drive the shared cluster through
    this process's connection: the ``ray_driver`` fixture, whose workers import the session's plug-ins).
    ``returncode`` is what the process would exit with; ``stdout``/``stderr`` need pytest's ``capsys``."""
    from kvrl.cli import main

    if capsys is not None:
        capsys.readouterr()  # what the test printed before is not the command's
    code = main(list(args))
    out = capsys.readouterr() if capsys is not None else None
    return subprocess.CompletedProcess(["kvrl", *args], code, out and out.out, out and out.err)


def kvrl_rl(tiny_dir, out, *overrides, data=None) -> list[dict]:
    """``kvrl rl`` on configs/tiny/rl.yaml at the RL_FAST sizes, in this process (:func:`kvrl_here`);
    ``data``: a folder with ``train.jsonl`` whose verifier module the session's driver ships (the
    ``signal_data`` fixture). Its metrics rows; fails the test unless it exits 0."""
    data_path = data / "train.jsonl" if data else ROOT / "configs/tiny/data/rl_train.jsonl"
    config = str(ROOT / "configs/tiny/rl.yaml")
    args = [
        "rl",
        "--config",
        config,
        f"model={tiny_dir}",
        f"trainer.output_dir={out}",
        f"data.path={data_path}",
    ]
    proc = kvrl_here(*args, *RL_FAST, *overrides)
    assert proc.returncode == 0, f"kvrl rl exited {proc.returncode} (its output is above)"
    return metrics(out)


def loads_in_learner(ckpt: Path) -> None:
    """``ckpt`` is a whole checkpoint: it has its trainer state, and the learner's model class loads it."""
    from kimivl import KimiVLForConditionalGeneration

    assert (ckpt / "trainer_state.json").exists()
    KimiVLForConditionalGeneration.from_pretrained(ckpt)


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
    env = {**os.environ, **(env or {}), MARK: marker, "PYTHONPATH": pythonpath, **job_env(marker, env)}
    with open(log, "a") as out:  # a file, not a pipe: a full pipe would block the run
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, marker


def job_env(marker: str, extra: dict | None = None) -> dict[str, str]:
    """The variable through which a driver started by a test hands the marker (and ``extra``) to its
    workers in the shared cluster, whose processes do not inherit the driver's environment: the job
    config that ``ray job submit`` gives a driver, here holding only a runtime env."""
    runtime_env = {"env_vars": {MARK: marker, **(extra or {})}}
    return {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": runtime_env})}


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_learner_rank(rank: int, master_port: int, world_size: int = 2) -> None:
    """Make this (spawned) process learner rank ``rank`` of a CPU DeepSpeed group on this machine."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(master_port),
        DS_ACCELERATOR="cpu",
    )


@dataclass
class RayHead:
    """A Ray head started by ``ray start --head --block`` in a process group of its own, with token
    authentication on. ``env``: what a client needs (RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH; no
    RAY_ADDRESS: give it the address). Stopping it stops only it, never another Ray on the machine."""

    address: str  # the GCS, ip:port
    env: dict[str, str]
    proc: subprocess.Popen
    temp: str
    log: Path

    @classmethod
    def start(
        cls, folder: Path, num_cpus: int, dashboard_port: int | None = None, token: Path | None = None
    ) -> RayHead:
        """``token``: the file with the token clients will present (default: a new one in ``folder``)."""
        if token is None:
            token = folder / "auth_token"
            token.write_text(secrets.token_hex(32))
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
        env.update(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
        port = free_port()
        # Ray's socket paths must stay under ~107 characters: a short temp dir, not pytest's tmp_path.
        temp = tempfile.mkdtemp(prefix="kvrl-ray-", dir="/tmp")
        dashboard = (
            ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
            if dashboard_port
            else ["--include-dashboard=false"]
        )
        log = folder / "head.log"
        with open(log, "w") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", f"--num-cpus={num_cpus}",
                 *dashboard, "--disable-usage-stats", f"--temp-dir={temp}",
                 # its dashboard agent's own port: at the default (52365) a second head on the machine
                 # has no agent, and its job server answers "No available agent to submit job"
                 f"--dashboard-agent-listen-port={free_port()}"],
                env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT, cwd=folder,
            )  # fmt: skip
        return cls(f"127.0.0.1:{port}", env, proc, temp, log)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until the head's raylet is up (``ray start`` prints its closing lines then)."""
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in self.log.read_text():
            assert self.proc.poll() is None, f"the Ray head exited:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the Ray head did not start:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM to ``ray start`` alone (it drains the node while its GCS is still up, and stops its
        processes), then SIGKILL to what is left of its process group. SIGTERM to the whole group
        killed the GCS first and the drain waited 30 s for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its group's id is its pid (start_new_session)
        self.proc.wait(timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)


def ray_leftovers(since: tuple[set[str], set[str]] = (set(), set())) -> tuple[set[str], set[str]]:
    """The live actors and placement groups (ids) of the cluster this process is connected to, less
    ``since`` (an earlier call's answer): what was created after it and is still there."""
    import ray
    from ray._private import state

    actors = {a["ActorID"] for a in state.actors().values() if a["State"] != "DEAD"}
    groups = {pg for pg, info in ray.util.placement_group_table().items() if info["state"] != "REMOVED"}
    return actors - since[0], groups - since[1]


def clear_ray_leftovers(actors: set[str], groups: set[str]) -> None:
    """Kill these actors and remove these placement groups (ids from :func:`ray_leftovers`), so that what
    one test left does not fail the tests after it."""
    import ray
    from ray._raylet import ActorID, PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    core = ray._private.worker.global_worker.core_worker
    for actor in actors:
        core.kill_actor(ActorID.from_hex(actor), True)
    for group in groups:
        ray.util.remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(group)))
