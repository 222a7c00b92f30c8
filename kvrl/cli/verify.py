"""``kvrl verify``: score responses with the sandboxed verifier pool that training uses."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rewards import DEFAULT_VERIFIER


def add_parser(sub) -> None:
    verify = sub.add_parser(
        "verify",
        help="check a response against a gold answer; prints one JSON object per check",
        description="Scores with the same sandboxed verifier pool as training. Prints "
        '{"correct", "extracted", "truncated", "error"}; with --jsonl, one object per line plus "line".',
    )
    verify.add_argument(
        "--verifier",
        default=DEFAULT_VERIFIER,
        help="built-in (math, choice, exact, number), "
        f"package.module:function, or a kvrl.verifiers entry point (default {DEFAULT_VERIFIER})",
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


def _cmd_verify(args: argparse.Namespace) -> int:
    import json
    import time

    from rewards import Task, VerifierPool, resolve_verifier  # lazy: loads only when this command runs
    from rewards.batch import jsonl_file, verify_jsonl

    resolve_verifier(args.verifier)  # an unknown name fails here, before any worker starts
    if args.jsonl is not None:
        jsonl_file(args.jsonl)  # so do a missing file and a folder
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
