"""The ``kvrl`` command line: one module per command, each with its flags beside its runner.

Library code logs; only these modules print. Each runner imports what it runs inside the function, so
``kvrl --help`` and a failing flag answer without loading torch, vLLM or Ray.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from kvrl.cli import bench, data, demo, difficulty, eval, rl, sft, tiny, verify

COMMANDS = (tiny, verify, difficulty, rl, sft, data, demo, bench, eval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvrl", description="RL post-training for Kimi-VL-Thinking.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["sft", "build"]:  # a two-word command: argparse has no default sub-subcommand
        argv = ["sft-build", *argv[2:]]
    args = build_parser().parse_args(argv)
    # vLLM logs every request at INFO to stdout; keep stdout for kvrl's own results.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "DEBUG" if args.verbose else "WARNING")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        print(f"kvrl {typed_command(args)}: error: {e}", file=sys.stderr)
        return 2


def typed_command(args: argparse.Namespace) -> str:
    """The command as typed, ``sft build``, ``eval tts``, ``data synth``, for messages."""
    words = [args.command.replace("-", " ")]  # sft-build is typed `kvrl sft build`
    words += [getattr(args, f"{args.command}_command", None) or ""]  # eval_command, data_command
    return " ".join(words).strip()


if __name__ == "__main__":
    sys.exit(main())
