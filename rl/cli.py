"""The ``kvrl`` command line. Library code logs; only this module prints."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def _cmd_tiny(args: argparse.Namespace) -> int:
    from kimivl.tiny import make_tiny
    from rl.provenance import write_run_info

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
    from kimivl.prepare import prepare_official
    from rl.provenance import write_run_info

    out = prepare_official(args.model, args.out)
    write_run_info(out, {"command": "prepare", "model": str(args.model)})
    print(
        f"kvrl prepare: {out} loads in the learner, the processor and vLLM (weights linked to {args.model})"
    )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    import json
    import time

    from rewards import Task, VerifierPool, resolve_verifier
    from rewards.batch import verify_jsonl

    resolve_verifier(args.verifier)  # an unknown name fails here, before any worker starts
    with VerifierPool(workers=args.workers, timeout_s=args.timeout, memory_mb=args.memory_mb) as pool:
        if args.jsonl is not None:
            start = time.perf_counter()
            results = verify_jsonl(args.jsonl, args.verifier, pool)
            seconds = time.perf_counter() - start
            for row in results:
                print(json.dumps(row, ensure_ascii=False))
            correct = sum(r["correct"] for r in results)
            print(
                f"kvrl verify: {len(results)} lines, {correct} correct, {seconds:.2f} s "
                f"({len(results) / max(seconds, 1e-9):.1f} verifications/s)",
                file=sys.stderr,
            )
            return 0
        if args.answer is None:
            raise ValueError("--answer is required unless --jsonl is given")
        if args.response_file is not None:
            response = Path(args.response_file).read_text(encoding="utf-8", errors="replace")
        elif args.response is not None:
            response = args.response
        else:
            raise ValueError("give --response TEXT or --response-file FILE (or --jsonl FILE)")
        (verdict,) = pool.verify([Task(response, args.answer, args.verifier)])
    print(json.dumps(verdict.to_dict(), ensure_ascii=False))
    return 0


def _cmd_difficulty(args: argparse.Namespace) -> int:
    import json

    from rl.difficulty import estimate_difficulty, job_from_settings

    # Flags left unset (None) come from --config's rollout, else from DifficultyJob's defaults.
    job = job_from_settings(
        str(args.checkpoint),
        str(args.data),
        config=args.config,
        out=str(args.out) if args.out else None,
        k=args.k,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        max_model_len=args.max_model_len,
        verifier=args.verifier,
        no_think_tries=args.drop_easy,
        seed=args.seed,
    )
    summary = estimate_difficulty(job)
    print(json.dumps(summary))
    return 0


def _cmd_rl(args: argparse.Namespace) -> int:
    import signal

    from rl.config import load_config
    from rl.trainer import RLConfig, TrainingStopped, train

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
    from rl.config import load_config
    from rl.plan import format_plan, make_plan
    from rl.trainer import RLConfig

    cfg = load_config(RLConfig, args.config, args.overrides)
    plan = make_plan(cfg, args.config)
    print(format_plan(plan, cfg, str(args.config)))
    return 0 if plan.fits else 1


def _cmd_sft(args: argparse.Namespace) -> int:
    from rl.config import load_config
    from rl.sft import SFTConfig, SFTTrainer

    cfg = load_config(SFTConfig, args.config, args.overrides)
    trainer = SFTTrainer(cfg)
    final = trainer.fit()
    print(f"kvrl sft: done; metrics in {trainer.run_dir / 'metrics.jsonl'}, checkpoint {final}")
    return 0


def _cmd_sft_build(args: argparse.Namespace) -> int:
    import json

    from rl.rejection import BuildJob, build_sft_data

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


def _cmd_data_synth(args: argparse.Namespace) -> int:
    import json

    from rl.synth import synthesize

    print(json.dumps(synthesize(args.out, args.n, args.seed, args.heldout, args.hasty, args.recheck)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from rl.demo import DemoError, run_demo

    profile = "quick" if args.quick else args.profile
    default = "runs/demo" if profile == "full" else f"runs/demo-{profile}"
    out = args.out or Path(default + (f"-seed{args.seed}" if args.seed else ""))
    try:
        summary = run_demo(out, profile, args.seed)
    except DemoError as e:
        print(f"kvrl demo: {e}", file=sys.stderr)
        return 1
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
    proof = s["profile"] != "quick"
    if not proof:
        lines.append("checks (their bars are for the full demo; --quick sizes do not learn):")
    for name, c in s["checks"].items():
        mark = ("pass" if c["passed"] else "FAIL") if proof else "-"
        lines.append(f"  {mark:<4}  {name.replace('_', ' ')} {c['bar']:.2f}: {c['value']:+.3f}")
    return "\n".join(lines)


def _cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks import run
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


def _cmd_eval_tts(args: argparse.Namespace) -> int:
    from rl.tts import format_budget, parse_budgets
    from rl.tts_eval import CurveConfig, TTSJob, run_tts_job

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvrl", description="RL post-training for Kimi-VL-Thinking.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    verify = sub.add_parser(
        "verify",
        help="check a response against a gold answer; prints one JSON object per check",
        description="Scores with the same sandboxed verifier pool as training. Prints "
        '{"correct", "extracted", "truncated", "error"}; with --jsonl, one object per line plus "line".',
    )
    verify.add_argument(
        "--verifier",
        default="math",
        help="built-in (math, choice, exact, number), "
        "package.module:function, or a kvrl.verifiers entry point (default math)",
    )
    verify.add_argument("--answer", help="the gold answer")
    source = verify.add_mutually_exclusive_group()
    source.add_argument("--response", help="the model response text")
    source.add_argument("--response-file", type=Path, help="read the response from this file")
    source.add_argument(
        "--jsonl", type=Path, help='batch: a jsonl file of {"response", "answer"[, "verifier"]}'
    )
    verify.add_argument("--timeout", type=float, default=10.0, help="seconds per verification (default 10)")
    verify.add_argument("--memory-mb", type=int, default=2048, help="memory limit per worker (default 2048)")
    verify.add_argument("--workers", type=int, default=2, help="verifier processes (default 2)")
    verify.set_defaults(func=_cmd_verify)

    diff = sub.add_parser(
        "difficulty",
        help="estimate problem difficulty (1 - pass rate of k samples) and write a difficulty column",
        description="With --config (the RL YAML), samples as its rollouts do: max tokens, model length, "
        "temperature, top-p, default verifier and seed come from it; a flag given overrides it. "
        "Each problem has its own seed, from --seed and its id.",
    )
    diff.add_argument("--checkpoint", required=True, type=Path, help="Kimi-VL checkpoint directory")
    diff.add_argument("--data", required=True, type=Path, help="prompt dataset (jsonl, parquet, ...)")
    diff.add_argument(
        "--config", type=Path, help="RL config to sample like, e.g. configs/kimi-vl-a3b/rl-1x8.yaml"
    )
    diff.add_argument("--k", type=int, default=10, help="samples per problem (default 10)")
    diff.add_argument(
        "--out", type=Path, help="output file (default: <data>.difficulty.jsonl beside the data)"
    )
    # Unset (None) flags come from --config, else from DifficultyJob's defaults, which the help names.
    diff.add_argument(
        "--temperature",
        type=float,
        help="sampling temperature (default: rollout.sampling.temperature, else 1.0)",
    )
    diff.add_argument(
        "--max-tokens",
        type=int,
        help="new tokens per sample (default: rollout.sampling.max_tokens, else 1024)",
    )
    diff.add_argument(
        "--max-model-len",
        type=int,
        help="prompt + response tokens (default: rollout.max_model_len, else 4096)",
    )
    diff.add_argument(
        "--verifier", help="for rows without a verifier column (default: rewards.verifier, else math)"
    )
    diff.add_argument(
        "--drop-easy",
        type=int,
        default=0,
        metavar="N",
        help="drop problems answered correctly with no thinking in N tries (k1.5 filter)",
    )
    diff.add_argument("--seed", type=int, help="job seed (default: trainer.seed, else 0)")
    diff.set_defaults(func=_cmd_difficulty)

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
    build.add_argument("--verifier", default="math", help="verifier for rows without a verifier column")
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=_cmd_sft_build)

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
        help="chance that each pass over the additions is checked again, up to 3 times (default 0)",
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_cmd_data_synth)

    demo = sub.add_parser(
        "demo",
        help="the whole system on a synthetic visual task: tiny model, SFT, difficulty, RL, TTS curves",
        description="Runs kvrl tiny, data synth, sft, difficulty, rl and eval tts as stages (logs in "
        "OUT/logs); writes OUT/summary.json and plots. Re-running with the same --out continues where "
        "it stopped. Full: about 23 min on 2 CPU cores; --quick: about 6 min, checks the plumbing.",
    )
    demo.add_argument(
        "--profile",
        choices=("full", "quick", "length"),
        default="full",
        help="full: the learning proof; quick: small sizes, no proof; length: full plus RL without the "
        "length reward, to compare (default full)",
    )
    demo.add_argument("--quick", action="store_true", help="the same as --profile quick")
    demo.add_argument("--seed", type=int, default=0, help="seeds every stage (default 0)")
    demo.add_argument(
        "--out",
        type=Path,
        help="output directory (default runs/demo, runs/demo-PROFILE for the others; -seedN for seed N)",
    )
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser(
        "bench",
        help="side-by-side benchmarks; JSON (benchmark, kvrl, baseline, ratio, unit) + docs/benchmarks.md",
    )
    from benchmarks import BENCHMARKS

    bench.add_argument(
        "name", choices=list(BENCHMARKS), help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items())
    )
    bench.add_argument("--quick", action="store_true", help="the smallest size only")
    bench.add_argument("--repeats", type=int, default=3, help="timed repeats per size (medians reported)")
    bench.add_argument("--model", type=Path, help="Kimi-VL directory (default: a fresh tiny model)")
    bench.add_argument("--out", type=Path, help="write the JSON result(s) here")
    bench.add_argument(
        "--table", type=Path, help="markdown table to add rows to (default: docs/benchmarks.md)"
    )
    bench.set_defaults(func=_cmd_bench)
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
    tts.add_argument("--verifier", default="math", help="verifier for rows without a verifier column")
    tts.add_argument("--max-model-len", type=int, help="engine context (default: what the run needs)")
    tts.add_argument(
        "--compare-naive",
        action="store_true",
        help="truncate mode: also generate once per budget, check the curves match and time both",
    )
    tts.add_argument("--wandb", choices=["offline", "online", "disabled"], default="offline")
    tts.set_defaults(func=_cmd_eval_tts)
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
        print(f"kvrl {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
