"""The ``kvrl`` command line. Library code logs; only this module prints."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _cmd_tiny(args: argparse.Namespace) -> int:
    from kimivl.tiny import make_tiny
    from rl.provenance import write_run_info

    out = make_tiny(args.out, seed=args.seed)
    write_run_info(out, {"command": "tiny", "seed": args.seed})
    print(f"tiny Kimi-VL checkpoint written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvrl", description="RL post-training for Kimi-VL-Thinking.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiny = sub.add_parser("tiny", help="write a tiny random-init Kimi-VL checkpoint (seconds, no download)")
    tiny.add_argument("--out", required=True, type=Path, help="output directory")
    tiny.add_argument("--seed", type=int, default=0, help="init and tokenizer seed (default 0)")
    tiny.set_defaults(func=_cmd_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"kvrl {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
