"""``kvrl bench``: side-by-side benchmarks (``benchmarks/``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    bench = sub.add_parser(
        "bench",
        help="side-by-side benchmarks; JSON (benchmark, kvrl, baseline, ratio, unit) + docs/benchmarks.md",
        description="Side-by-side benchmarks on this machine, reported as ratios measured in one run. "
        "kvrl bench NAME --help describes one.",
    )
    from benchmarks import BENCHMARKS  # light: names and descriptions only

    names = bench.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, summary in BENCHMARKS.items():
        one = names.add_parser(
            name,
            help=summary,
            description=_description(name) or summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        one.add_argument("--quick", action="store_true", help="the smallest size only")
        one.add_argument("--repeats", type=int, default=3, help="timed repeats per size (medians reported)")
        one.add_argument("--model", type=Path, help="Kimi-VL directory (default: a fresh tiny model)")
        one.add_argument("--out", type=Path, help="write the JSON result(s) here")
        one.add_argument(
            "--table", type=Path, help="markdown table to add rows to (default: docs/benchmarks.md)"
        )
        one.set_defaults(func=_cmd_bench)


def _description(name: str) -> str | None:
    """The benchmark module's docstring, read from its source without importing it (which would load
    torch, vLLM or Ray just to print help)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(f"benchmarks.{name}")
    if spec is None or spec.origin is None:
        return None
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8")))


def _cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks import run  # lazy: loads only when this command runs
    from benchmarks.common import TABLE, record

    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    model = str(args.model) if args.model else None
    results = run(args.name, quick=args.quick, repeats=args.repeats, model=model)
    table = args.table or TABLE
    record(results, args.out, table)
    for r in results:
        print(
            f"{r['benchmark']:<8} {r['size']}: kvrl {r['kvrl']:.4g} {r['unit']} "
            f"[{r['kvrl_min']:.4g}-{r['kvrl_max']:.4g}], baseline {r['baseline']:.4g} "
            f"[{r['baseline_min']:.4g}-{r['baseline_max']:.4g}], ratio {r['ratio']:.2f}x"
        )
    print(
        f"kvrl bench: {len(results)} result(s)"
        + (f" in {args.out}" if args.out else "")
        + f"; rows added to {table}"
    )
    return 0
