"""Where the start-up of a tiny `kvrl rl` goes: each piece timed alone, in a fresh process, one at a time.

    .venv/bin/python scripts/startup_breakdown.py [--model DIR] [--out FILE.json]

Every process a run starts pays an interpreter and its imports; the rollout actors then start a vLLM
engine, the learner ranks DeepSpeed and the model. Timed here, each in a process of its own with nothing
else running (so a figure is one process's cost, not a share of a loaded machine):

- ``python``: an interpreter that imports nothing;
- ``import <module>``: what the driver (``rl.trainer``), a rollout actor (``actors.rollout``) and a learner
  rank (``actors.learner``) import before they do anything;
- ``vllm engine``: ``rollout.engine.make_llm`` on the tiny model, after its imports;
- ``learner rank``: ``learner.rank.Learner`` on the tiny model (one rank: DeepSpeed's gloo group, the
  comm op, ZeRO-2, the model), after its imports;
- ``ray start`` and ``ray actor``: a local Ray head, and one actor that imports nothing on it;
- ``kvrl rl (1 iteration)``: the whole run, driver to exit, with its own Ray.
Needs a tiny model (made here with ``kvrl tiny`` unless ``--model`` names one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ENGINE = """
import time, sys
from rollout.engine import EngineConfig, make_llm
if __name__ == "__main__":
    t = time.perf_counter()
    make_llm(EngineConfig(model=sys.argv[1], max_model_len=1024, max_num_seqs=32))
    print("SECONDS", time.perf_counter() - t)
"""

LEARNER = """
import os, sys, time
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=sys.argv[2], DS_ACCELERATOR="cpu")
from learner.rank import Learner, LearnerConfig
t = time.perf_counter()
Learner(sys.argv[1], LearnerConfig(zero_stage=2), 0, 1)
print("SECONDS", time.perf_counter() - t)
"""

RAY = """
import time, ray
t = time.perf_counter()
ray.init(num_cpus=4, include_dashboard=False)
started = time.perf_counter() - t
@ray.remote
class Empty:
    def ping(self):
        return 1
t = time.perf_counter()
ray.get(Empty.remote().ping.remote())
print("SECONDS", started, time.perf_counter() - t)
ray.shutdown()
"""


# what `kvrl rl` logs as it comes up, in order
MILESTONES = {
    "Ray up": "INFO actors.placement: Ray cluster",
    "rollout engines up": "rollout pool up",
    "learner ranks up": "learner group up",
}


def logged_at(output: str, text: str) -> float:
    """The wall-clock time of the first log line holding ``text`` (logging's default time format)."""
    line = next(x for x in output.splitlines() if text in x)
    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def timed(*args: str, own_ray: bool = False) -> tuple[float, str]:
    """Seconds ``python ARGS`` took, and what it printed. ``own_ray``: a Ray of its own, not the cluster
    the shell's RAY_ADDRESS names."""
    env = {k: v for k, v in os.environ.items() if not (own_ray and k == "RAY_ADDRESS")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)[:80]} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc.stdout + proc.stderr


def inner(stdout: str) -> list[float]:
    line = next(x for x in stdout.splitlines() if x.startswith("SECONDS"))
    return [float(v) for v in line.split()[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a tiny model (default: one made here)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kvrl-startup-"))
    model = args.model or tmp / "tiny"
    if args.model is None:
        timed("-m", "kvrl", "tiny", "--out", str(model))
    rows: dict[str, float] = {}
    rows["python"] = timed("-c", "pass")[0]
    for module in ("rl.trainer", "actors.rollout", "actors.learner"):
        rows[f"import {module}"] = timed("-c", f"import {module}")[0]
    rows["vllm engine"] = inner(timed("-c", ENGINE, str(model))[1])[0]
    rows["learner rank"] = inner(timed("-c", LEARNER, str(model), "29533")[1])[0]
    ray_start, ray_actor = inner(timed("-c", RAY, own_ray=True)[1])
    rows["ray start"], rows["ray actor"] = ray_start, ray_actor
    overrides = [f"model={model}", f"trainer.output_dir={tmp / 'run'}", "trainer.iterations=1"]
    overrides += ["trainer.prompts_per_iteration=4", "rollout.sampling.n=2", "rollout.sampling.max_tokens=16"]
    overrides += ["tracking.wandb=disabled"]
    rl = ("-m", "kvrl", "rl", "--config", "configs/tiny/rl.yaml", *overrides)
    launched = time.time()
    rows["kvrl rl (1 iteration)"], printed = timed(*rl, own_ray=True)
    for name, line in MILESTONES.items():  # when the run logged each, from its launch
        rows[f"  kvrl rl: {name}"] = logged_at(printed, line) - launched
    for name, seconds in rows.items():
        print(f"{name:<28} {seconds:6.1f} s")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
