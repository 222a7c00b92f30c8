"""``kvrl rl`` (the RL driver, ``rl/trainer.py``) and ``kvrl plan`` (its placement and memory,
``actors/plan.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kvrl.cli.training import run_training


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
    from rl.trainer import RLConfig, train  # lazy, as in every runner: Ray and vLLM load only to run
    from runkit.config import load_config

    code, trainer = run_training("rl", train, load_config(RLConfig, args.config, args.overrides))
    if trainer is not None:
        print(
            f"kvrl rl: done; metrics in {trainer.run_dir / 'metrics.jsonl'}, "
            f"checkpoints in {trainer.run_dir / 'checkpoints'}"
        )
    return code


def _cmd_plan(args: argparse.Namespace) -> int:
    from actors.plan import format_plan, make_plan  # lazy: loads only when this command runs
    from rl.trainer import RLConfig
    from runkit.config import load_config

    cfg = load_config(RLConfig, args.config, args.overrides)
    plan = make_plan(cfg, args.config)
    print(format_plan(plan, cfg, str(args.config)))
    return 0 if plan.fits else 1
