"""``kvrl eval tts``: test-time scaling curves of checkpoints (``evaluation/tts.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rewards import DEFAULT_VERIFIER


def add_parser(sub) -> None:
    evaluate = sub.add_parser("eval", help="evaluations of checkpoints (`kvrl eval tts`: test-time scaling)")
    evals = evaluate.add_subparsers(dest="eval_command", required=True, metavar="EVAL")
    tts = evals.add_parser(
        "tts",
        help="test-time scaling curves: accuracy vs. thinking budget; writes tts.csv/json/png",
        description="Per budget the thinking section is capped: truncate = still thinking at the cap "
        "scores 0 (one generation serves all budgets); force = ◁/think▷ is appended at the cap and the "
        "model answers in <= --answer-tokens more.",
    )
    tts.add_argument(
        "--checkpoint", required=True, type=Path, action="append", help="Kimi-VL checkpoint (repeatable)"
    )
    tts.add_argument("--data", required=True, type=Path, help="prompt dataset (id, question, answer, ...)")
    tts.add_argument(
        "--budgets",
        default="16,32,64,128",
        help="thinking budgets, k = 1024: e.g. 1k,2k,4k (default 16,32,64,128)",
    )
    tts.add_argument("--mode", choices=["truncate", "force"], default="truncate", help="default truncate")
    tts.add_argument(
        "--answer-tokens", type=int, default=32, help="tokens allowed after ◁/think▷ (default 32)"
    )
    tts.add_argument("--k", type=int, default=1, help="pass@k (default 1)")
    tts.add_argument("--samples", type=int, help="responses per problem (default: k)")
    tts.add_argument("--out", type=Path, default=Path("runs/tts"), help="output directory (default runs/tts)")
    tts.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    tts.add_argument("--seed", type=int, default=0)
    tts.add_argument("--max-samples", type=int, help="evaluate the first N problems only")
    tts.add_argument(
        "--verifier", default=DEFAULT_VERIFIER, help="verifier for rows without a verifier column"
    )
    tts.add_argument("--max-model-len", type=int, help="engine context (default: what the run needs)")
    tts.add_argument(
        "--compare-naive",
        action="store_true",
        help="truncate mode: also generate once per budget, check the curves match and time both",
    )
    tts.add_argument("--wandb", choices=["offline", "online", "disabled"], default="offline")
    tts.set_defaults(func=_cmd_eval_tts)


def _cmd_eval_tts(args: argparse.Namespace) -> int:
    from evaluation.curves import format_budget, parse_budgets  # lazy: loads only when this command runs
    from evaluation.tts import CurveConfig, TTSJob, run_tts_job

    try:
        budgets = parse_budgets(args.budgets)
    except ValueError as e:
        raise ValueError(f"--budgets: {e}") from e
    try:
        curve = CurveConfig(
            budgets=budgets,
            mode=args.mode,
            answer_tokens=args.answer_tokens,
            samples=args.k if args.samples is None else args.samples,
            k=args.k,
            temperature=args.temperature,
            seed=args.seed,
        )
    except ValueError as e:
        raise ValueError(f"--answer-tokens/--k/--samples: {e}") from e
    job = TTSJob(
        checkpoints=[str(c) for c in args.checkpoint],
        data=str(args.data),
        curve=curve,
        out=str(args.out),
        max_samples=args.max_samples,
        verifier=args.verifier,
        max_model_len=args.max_model_len,
        compare_naive=args.compare_naive,
        wandb=args.wandb,
    )
    result = run_tts_job(job)
    print(
        f"{'checkpoint':<28} {'budget':>6} {'accuracy':>8}  {'95% CI':<15} {'thinking':>8} {'truncated':>9}"
    )
    for p in result["points"]:
        name = p.checkpoint if len(p.checkpoint) <= 28 else "…" + p.checkpoint[-27:]
        ci = f"[{p.ci_low:.3f}, {p.ci_high:.3f}]"
        print(
            f"{name:<28} {format_budget(p.budget):>6} {p.accuracy:>8.3f}  {ci:<15} "
            f"{p.mean_thinking_tokens:>8.1f} {p.truncation_rate:>9.3f}"
        )
    for t in result["timing"]:
        line = f"{t['checkpoint']}: generation {t['generation_s']:.2f} s"
        if "naive_generation_s" in t:
            line += (
                f"; warm: one generation {t['one_generation_warm_s']:.2f} s, per-budget "
                f"{t['naive_generation_s']:.2f} s ({t['naive_over_one_generation']:.2f}x), "
                f"curves {'identical' if t['naive_matches'] else 'DIFFER'}"
            )
        print(line)
    paths = result["paths"]
    print(f"kvrl eval tts: wrote {paths['csv']}, {paths['json']}, {paths['png']}")
    return 0
