"""``kvrl data synth``: the local synthetic visual reasoning data set (``corpus/synth.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="datasets (`kvrl data synth`: a local visual reasoning dataset)")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA")
    synth = data_sub.add_parser(
        "synth",
        help="render grid images with multi-step counting questions, train/held-out splits and SFT traces",
    )
    synth.add_argument("--out", required=True, type=Path, help="output directory")
    synth.add_argument("--n", type=int, default=2000, help="training problems (default 2000)")
    synth.add_argument("--heldout", type=int, default=256, help="held-out problems (default 256)")
    synth.add_argument(
        "--hasty",
        type=float,
        default=0.0,
        help="fraction of SFT traces that read row 1 only and take every row to be like it (default 0)",
    )
    synth.add_argument(
        "--recheck",
        type=float,
        default=0.0,
        help="chance that a stepwise trace then names the grid's cells again, and again, up to 2 times "
        "(default 0)",
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_cmd_data_synth)


def _cmd_data_synth(args: argparse.Namespace) -> int:
    import json

    from corpus.synth import synthesize  # lazy: loads only when this command runs

    print(json.dumps(synthesize(args.out, args.n, args.seed, args.heldout, args.hasty, args.recheck)))
    return 0
