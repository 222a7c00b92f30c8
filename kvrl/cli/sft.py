"""``kvrl sft`` (the SFT driver) and ``kvrl sft build`` (rejection-sampled SFT data)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvrl.cli.training import run_training
from rewards import DEFAULT_VERIFIER


def add_parser(sub) -> None:
    sft = sub.add_parser(
        "sft",
        help="long chain-of-thought SFT on the learner group (`kvrl sft build`: rejection-sampled data)",
    )
    sft.add_argument("--config", required=True, type=Path, help="YAML config, e.g. configs/tiny/sft.yaml")
    sft.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. trainer.max_steps=5"
    )
    sft.set_defaults(func=_cmd_sft)

    build = sub.add_parser(
        "sft-build",
        prog="kvrl sft build",
        help="sample k responses per problem, keep verified-correct ones as SFT jsonl (= kvrl sft build)",
    )
    build.add_argument("--checkpoint", required=True, type=Path, help="Kimi-VL checkpoint directory")
    build.add_argument("--data", required=True, type=Path, help="prompt dataset (id, question, answer, ...)")
    build.add_argument("--out", required=True, type=Path, help="output SFT dataset (.jsonl or .parquet)")
    build.add_argument("--k", type=int, default=8, help="samples per problem (default 8)")
    build.add_argument(
        "--shortest", action="store_true", help="keep only the shortest correct response (k1.5)"
    )
    build.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    build.add_argument(
        "--max-tokens", type=int, default=1024, help="max new tokens per sample (default 1024)"
    )
    build.add_argument(
        "--verifier", default=DEFAULT_VERIFIER, help="verifier for rows without a verifier column"
    )
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=_cmd_sft_build)


def _cmd_sft(args: argparse.Namespace) -> int:
    from runkit.config import load_config  # lazy, as in every runner: Ray and torch load only to run
    from sft.trainer import SFTConfig, train

    code, trainer = run_training("sft", train, load_config(SFTConfig, args.config, args.overrides))
    if trainer is not None:
        print(f"kvrl sft: done; metrics in {trainer.run_dir / 'metrics.jsonl'}, checkpoint {trainer.final}")
    return code


def _cmd_sft_build(args: argparse.Namespace) -> int:
    import json

    from sft.rejection import BuildJob, build_sft_data  # lazy: loads only when this command runs

    job = BuildJob(
        checkpoint=str(args.checkpoint),
        data=str(args.data),
        out=str(args.out),
        k=args.k,
        shortest=args.shortest,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        verifier=args.verifier,
        seed=args.seed,
    )
    summary = build_sft_data(job)
    print(json.dumps(summary))
    if not summary["written"]:
        print("kvrl sft build: no response was verified correct; nothing to train on", file=sys.stderr)
        return 1
    return 0
