"""``kvrl tiny`` (a tiny random Kimi-VL checkpoint) and ``kvrl prepare`` (an official one made loadable)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    tiny = sub.add_parser("tiny", help="write a tiny random-init Kimi-VL checkpoint (seconds, no download)")
    tiny.add_argument("--out", required=True, type=Path, help="output directory")
    tiny.add_argument("--seed", type=int, default=0, help="init and tokenizer seed (default 0)")
    tiny.add_argument(
        "--hidden-size",
        type=int,
        help="text tower width (MLP 2x, experts 0.5x that; default 64, the tests' and the demo's model)",
    )
    tiny.set_defaults(func=_cmd_tiny)

    prep = sub.add_parser(
        "prepare",
        help="make an official Kimi-VL-A3B checkpoint directory loadable without remote code "
        "(tokenizer.json from tiktoken.model, kvrl's processor; weights symlinked)",
    )
    prep.add_argument("--model", required=True, type=Path, help="the official directory, as downloaded")
    prep.add_argument("--out", required=True, type=Path, help="the directory to write (configs' `model`)")
    prep.set_defaults(func=_cmd_prepare)


def _cmd_tiny(args: argparse.Namespace) -> int:
    from kimivl.tiny import make_tiny  # lazy: loads only when this command runs
    from runkit.provenance import write_run_info

    widths = {}
    if args.hidden_size is not None:
        if args.hidden_size < 16 or args.hidden_size % 16:
            print(
                f"kvrl tiny: --hidden-size must be a multiple of 16, >= 16 (got {args.hidden_size})",
                file=sys.stderr,
            )
            return 2
        h = args.hidden_size
        widths = {"hidden_size": h, "intermediate_size": 2 * h, "moe_intermediate_size": h // 2}
    out = make_tiny(args.out, seed=args.seed, **widths)
    write_run_info(out, {"command": "tiny", "seed": args.seed, **widths})
    print(f"tiny Kimi-VL checkpoint written to {out}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from kimivl.prepare import prepare_official  # lazy: loads only when this command runs
    from runkit.provenance import write_run_info

    out = prepare_official(args.model, args.out)
    write_run_info(out, {"command": "prepare", "model": str(args.model)})
    print(
        f"kvrl prepare: {out} loads in the learner, the processor and vLLM (weights linked to {args.model})"
    )
    return 0
