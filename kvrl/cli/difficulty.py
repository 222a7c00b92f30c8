"""``kvrl difficulty``: per-problem difficulty from the pass rate of k samples (``evaluation/pass_rates.py``),
sampling as an RL config's rollouts do."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evaluation.pass_rates import DifficultyJob

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
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


def _cmd_difficulty(args: argparse.Namespace) -> int:
    import json

    from evaluation.pass_rates import estimate_difficulty  # lazy: loads only when this command runs

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


# Job settings an RL config supplies, and the key each comes from; a command-line flag overrides them.
# The thinking budget is left out on purpose: difficulty is the pass rate of free thinking.
FROM_RL_CONFIG = {
    "max_tokens": "rollout.sampling.max_tokens",
    "max_model_len": "rollout.max_model_len",
    "temperature": "rollout.sampling.temperature",
    "top_p": "rollout.sampling.top_p",
    "verifier": "rewards.verifier",
    "seed": "trainer.seed",
}


def job_from_settings(checkpoint: str, data: str, config: str | Path | None = None, **given) -> DifficultyJob:
    """A job from the command line's settings (``None``: not given) over an RL config's over the defaults.

    ``config`` is an RL YAML (``kvrl rl --config``); the keys in :data:`FROM_RL_CONFIG` come from it
    unless given. A missing file or a bad key raises ``runkit.config.ConfigError`` naming it.
    """
    values = {name: v for name, v in given.items() if v is not None}
    sources = {name: "flag" for name in FROM_RL_CONFIG if name in values}
    from evaluation.pass_rates import DifficultyJob  # lazy, as in every runner: vLLM and Ray load late
    from rl.trainer import RLConfig
    from runkit.config import load_config

    if config is not None:
        cfg = load_config(RLConfig, config)
        for name, key in FROM_RL_CONFIG.items():
            if name not in values:
                value = cfg
                for part in key.split("."):
                    value = getattr(value, part)
                values[name], sources[name] = value, f"{key} of {config}"
        if cfg.rollout.sampling.thinking_budget is not None:
            log.info(
                "difficulty: rollout.sampling.thinking_budget=%d of %s is not applied: problems are "
                "measured thinking freely up to max_tokens",
                cfg.rollout.sampling.thinking_budget,
                config,
            )
    job = DifficultyJob(checkpoint=checkpoint, data=data, **values)
    settings = (f"{name}={getattr(job, name)!r} ({sources.get(name, 'default')})" for name in FROM_RL_CONFIG)
    log.info("difficulty: %s", ", ".join(settings))
    return job
