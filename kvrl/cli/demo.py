"""``kvrl demo``: every stage on the synthetic task, with the learning checks (``kvrl/demo.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="the whole system on a synthetic visual task: tiny model, SFT, difficulty, RL, TTS curves",
        description="Runs kvrl tiny, data synth, sft, difficulty, rl and eval tts as stages (logs in "
        "OUT/logs); writes OUT/summary.json and plots. Re-running with the same --out continues where "
        "it stopped. Full: about 17 min on 2 CPU cores; --quick: under 5 min, checks the plumbing.",
    )
    demo.add_argument(
        "--profile",
        choices=("full", "quick", "length", "muon"),
        default="full",
        help="full: the learning proof; quick: small sizes, no proof; length: full plus RL without the "
        "length reward, to compare; muon: full trained with Muon instead of AdamW (default full)",
    )
    demo.add_argument("--quick", action="store_true", help="the same as --profile quick")
    demo.add_argument("--seed", type=int, default=0, help="seeds every stage (default 0)")
    demo.add_argument(
        "--out",
        type=Path,
        help="output directory (default runs/demo, runs/demo-PROFILE for the others; -seedN for seed N)",
    )
    demo.add_argument(
        "--until",
        choices=("model", "data", "sft", "difficulty"),
        help="stop after this stage, without the summary (the inputs of the RL stage: difficulty)",
    )
    demo.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from kvrl.demo import DemoError, run_demo  # lazy: loads only when this command runs

    profile = "quick" if args.quick else args.profile
    default = "runs/demo" if profile == "full" else f"runs/demo-{profile}"
    out = args.out or Path(default + (f"-seed{args.seed}" if args.seed else ""))
    try:
        summary = run_demo(out, profile, args.seed, until=args.until)
    except DemoError as e:
        print(f"kvrl demo: {e}", file=sys.stderr)
        return 1
    if args.until:
        print(f"kvrl demo: stopped after stage {args.until}; the RL config is {out / 'configs' / 'rl.yaml'}")
        return 0
    print(format_demo_summary(summary))
    print(f"kvrl demo: wrote {out / 'summary.json'}, {out / 'rl_training.png'}, {out / 'tts.png'}")
    return 0


def format_demo_summary(s: dict) -> str:
    """The demo's table: wall time per stage, held-out accuracy per thinking budget, the checks."""
    lines = [f"kvrl demo ({s['profile']}): wall time per stage"]
    for stage, seconds in s["wall_s"].items():
        lines.append(f"  {stage:<11} {seconds // 60:3.0f} min {seconds % 60:4.1f} s")
    budgets = list(s["tts"]["sft"])
    lines.append(
        f"held-out accuracy ({s['heldout_problems']} problems x {s['samples_per_problem']} samples, "
        f"T={s['temperature']}) by thinking budget (tokens)"
    )
    lines.append("  " + f"{'checkpoint':<11}" + "".join(f"{b:>7}" for b in budgets))
    for name, curve in s["tts"].items():
        lines.append("  " + f"{name:<11}" + "".join(f"{curve[b]:>7.3f}" for b in budgets))
    lines.append(
        f"sft_accuracy {s['sft_accuracy']:.3f}, rl_accuracy {s['rl_accuracy']:.3f} "
        f"(budget {s['accuracy_budget']}, longer than any trace)"
    )
    lines.append(
        f"greedy (T=0): sft {s['sft_greedy_accuracy']:.3f}, rl {s['rl_greedy_accuracy']:.3f}; "
        + "mean thinking tokens (T=1): "
        + ", ".join(f"{k} {v:.1f}" for k, v in s["mean_thinking_tokens"].items())
    )
    if "length_reward" in s:
        lr = s["length_reward"]
        lines.append(
            f"length reward (weight {lr['weight']}), {s['heldout_problems']} problems x "
            f"{lr['samples_per_problem']} samples: thinking tokens "
            f"{lr['mean_thinking_tokens']['with']:.1f} with / {lr['mean_thinking_tokens']['without']:.1f} "
            f"without, accuracy {lr['accuracy']['with']:.3f} / {lr['accuracy']['without']:.3f}"
        )
    proof = s["profile"] != "quick"
    if not proof:
        lines.append("checks (their bars are for the full demo; --quick sizes do not learn):")
    for name, c in s["checks"].items():
        mark = ("pass" if c["passed"] else "FAIL") if proof else "-"
        lines.append(f"  {mark:<4}  {name.replace('_', ' ')} {c['bar']:.2f}: {c['value']:+.3f}")
    return "\n".join(lines)
