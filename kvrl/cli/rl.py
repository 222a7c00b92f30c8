"""``kvrl rl`` (the RL driver, ``rl/trainer.py``) and ``kvrl plan`` (its placement and memory,
``actors/plan.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    rl = sub.add_parser(
        "rl", help="RL with online policy mirror descent (Kimi k1.5) on Ray + vLLM + DeepSpeed"
    )
    rl.add_argument("--config", required=True, type=Path, help="YAML config, e.g. configs/tiny/rl.yaml")
    rl.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. trainer.iterations=5"
    )
    rl.set_defaults(func=_cmd_rl)

    plan = sub.add_parser(
        "plan", help="an RL config's placement and per-GPU memory on the cluster its `plan:` section names"
    )
    plan.add_argument("--config", required=True, type=Path, help="e.g. configs/kimi-vl-a3b/rl-1x8.yaml")
    plan.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. plan.nodes=2")
    plan.set_defaults(func=_cmd_plan)


def _cmd_rl(args: argparse.Namespace) -> int:
    import signal

    from rl.trainer import RLConfig, TrainingStopped, train
    from runkit.config import load_config

    cfg = load_config(RLConfig, args.config, args.overrides)
    current = []

    def started(trainer) -> None:
        current[:] = [trainer]
        # After ray.init, whose crash handler would otherwise take SIGTERM and abort the driver.
        signal.signal(signal.SIGTERM, terminated)
        # First thing in the job log of `ray job submit`: where the run writes, and on which cluster.
        print(f"kvrl rl: run dir {trainer.run_dir.resolve()}; {trainer.cluster}", flush=True)

    def terminated(signum, frame) -> None:
        # Pre-emption or `ray job stop`: stop between two Python steps, so the actors are shut down and a
        # checkpoint being written is either whole (renamed into place) or removed.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise TrainingStopped(f"SIGTERM received. {current[0].resume_hint()}")

    try:
        trainer = train(cfg, on_start=started)
    except TrainingStopped as e:
        print(f"kvrl rl: stopped: {e}", file=sys.stderr)
        return 1
    print(
        f"kvrl rl: done; metrics in {trainer.run_dir / 'metrics.jsonl'}, "
        f"checkpoints in {trainer.run_dir / 'checkpoints'}"
    )
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from actors.plan import format_plan, make_plan
    from rl.trainer import RLConfig
    from runkit.config import load_config

    cfg = load_config(RLConfig, args.config, args.overrides)
    plan = make_plan(cfg, args.config)
    print(format_plan(plan, cfg, str(args.config)))
    return 0 if plan.fits else 1
