"""``kvrl bench optim``: Muon (``learner.optimizer: muon``, Moonlight's scaling) against AdamW, side by side
in one run: SFT on the demo's synthetic task, then a short RL run with each.

Fair by the rule in DESIGN.md: one knob a side, the same grid on each, chosen on one split and reported
on another, over seeds.

SFT: the demo's model and SFT data, split once (a fixed shuffle, before anything is tuned) into training
rows, a validation split and a test split (``SPLIT`` of the conversations each). One epoch in one LR
phase (5% warm-up, cosine to a tenth of the peak), the same rows, order, batch and steps for both; the
loss on both splits every ``EVAL_EVERY`` steps (``data.eval_path`` gives ``eval_loss``, ``data.test_path``
``test_loss``). The one tuned knob is the peak lr: three half-decade points a side (``LRS``; each row
brackets its optimizer's best on this task), every point trained once per seed. Each optimizer keeps the
lr whose final *validation* loss, averaged over the seeds, is lowest. Muon's run gives the parameters it
does not take (embeddings, ``lm_head``, norms: 26% of the tiny model's) its own lr (Moonlight's ratio 1,
``learner.muon_adamw_lr_ratio`` at its default: not tuned, since AdamW has no second knob either).

Reported, on the *test* split at each optimizer's chosen lr, per seed: AdamW's final test loss L and the
steps each optimizer needs to reach L (the first evaluated step at or below it). ``kvrl_runs`` are Muon's
steps by seed, ``baseline_runs`` AdamW's, and the top-level ``ratio`` is AdamW's median over Muon's; a Muon
that never reaches L counts all its steps (``muon_reached`` per seed), so it then scores at most 1.
Repeat k (``--repeats``, at least 2 at the full size) trains with ``trainer.seed`` = the config's + k,
which orders the rows.

RL: the demo's RL stage (its SFT checkpoint, RL data and config) for ``RL_ITERATIONS`` iterations with each
optimizer at the demo's RL lr (tuned for AdamW when the demo was made: Muon's update RMS is matched to
AdamW's, which is what lets both take one lr), once per seed, and the held-out accuracy after the last (as
in ``kvrl bench pipeline``); ``rl.accuracy_gaps`` is Muon minus AdamW by seed.

``--model`` names a ``kvrl demo`` directory; without it the demo's stages up to its RL inputs are built once
(``benchmarks.common.demo_inputs``). Quick: the tiny SFT config for a few steps at one lr each and 2 tiny
RL iterations each, a check that it all runs (its figures mean nothing).
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path

from runkit.config import load_config
from sft.trainer import SFTConfig
from sft.trainer import train as train_sft

from .common import ROOT, demo_inputs, result
from .iteration import metric_rows
from .pipeline import demo_eval

log = logging.getLogger(__name__)
OPTIMIZERS = ("adamw", "muon")
LRS = {"adamw": (1e-3, 3e-3, 1e-2), "muon": (3e-3, 1e-2, 3e-2)}
SPLIT = 0.03  # of the SFT conversations, for validation and again for test
SPLIT_SEED = 1234  # fixed: the splits do not move with the training seed
EVAL_EVERY = 5
RL_ITERATIONS = 8
PLOT = ROOT / "runs" / "bench" / "optim.png"


def run(quick: bool = False, repeats: int = 2, model: str | None = None) -> list[dict]:
    if not quick and repeats < 2:
        raise ValueError(f"bench optim needs --repeats >= 2 at the full size (seeds), got {repeats}")
    demo = None if quick else demo_inputs(model)
    if quick:
        config, base = ROOT / "configs" / "tiny" / "sft.yaml", _tiny_sft(model)
        lrs = dict.fromkeys(OPTIMIZERS, (3e-3,))
    else:
        config, lrs, base = demo / "configs" / "sft.yaml", LRS, []
    seed0 = load_config(SFTConfig, config, base).trainer.seed
    seeds = [seed0 + k for k in range(repeats)]
    base = [*base, *_splits(config, base)]
    grid = {  # grid[name][lr]: one (curves, seconds) per seed
        name: {
            lr: [
                _sft(config, [*base, *_phase(lr), f"learner.optimizer={name}", f"trainer.seed={s}"])
                for s in seeds
            ]
            for lr in lrs[name]
        }
        for name in OPTIMIZERS
    }
    sft = _sft_figures(grid)
    rl = _rl_all(demo, base, seeds)
    chosen, muon_steps = sft.pop("chosen"), sft.pop("muon_steps")
    out = Path(tempfile.mkdtemp()) / "optim.png" if quick else PLOT
    plot = _plot(chosen, sft["tuned_lr"], sft["target_loss"], out)
    last_step = chosen["adamw"][0]["test_loss"][-1][0]
    adamw_steps = sft["steps_to_target"]["adamw"]
    return [
        result(
            "optim",
            [float(s) for s in muon_steps],
            [float(s) for s in adamw_steps],
            "steps to AdamW's final test loss",
            higher_is_better=False,
            size=f"{last_step} SFT steps" + (" (tiny)" if quick else " (demo SFT)"),
            seeds=seeds,
            lr_grid={name: list(lrs[name]) for name in OPTIMIZERS},
            **sft,
            rl=rl,
            plot=str(plot),
            baseline_description="AdamW (learner.optimizer: adamw) at its own lr, chosen on the validation "
            "split from as many points as Muon's; same data, order and steps",
            config=str(config),
        )
    ]


def _sft_figures(grid: dict) -> dict:
    """From the SFT grid: each optimizer's lr chosen on validation, and on the test split per seed AdamW's
    final loss (the target) and the steps each optimizer takes to reach it."""
    best = {name: min(runs, key=lambda lr: _mean_final(runs[lr], "eval_loss")) for name, runs in grid.items()}
    chosen = {name: [curves for curves, _ in grid[name][best[name]]] for name in OPTIMIZERS}
    targets = [c["test_loss"][-1][1] for c in chosen["adamw"]]
    steps = {
        name: [_steps_to(c["test_loss"], t) for c, t in zip(chosen[name], targets, strict=True)]
        for name in OPTIMIZERS
    }

    def finals(key: str) -> dict:
        return {
            name: {str(lr): [c[key][-1][1] for c, _ in r] for lr, r in runs.items()}
            for name, runs in grid.items()
        }

    return {
        "tuned_lr": best,
        "tuned_on": "final eval_loss (validation split), mean over seeds",
        "target_loss": targets,
        "steps_to_target": steps,
        "muon_reached": [s is not None for s in steps["muon"]],
        # a Muon that never reaches the target counts all its steps
        "muon_steps": [
            s if s is not None else c["test_loss"][-1][0]
            for s, c in zip(steps["muon"], chosen["muon"], strict=True)
        ],
        "validation_loss": finals("eval_loss"),
        "test_loss": finals("test_loss"),
        # wall seconds per SFT step of each grid point's runs, start-up and evaluations included
        "seconds_per_step": {
            name: {str(lr): [t / c["test_loss"][-1][0] for c, t in r] for lr, r in runs.items()}
            for name, runs in grid.items()
        },
        "chosen": chosen,
        "curves": {
            name: [
                [
                    {"step": s, "eval_loss": v, "test_loss": w}
                    for (s, v), (_, w) in zip(c["eval_loss"], c["test_loss"], strict=True)
                ]
                for c in chosen[name]
            ]
            for name in OPTIMIZERS
        },
    }


def _mean_final(runs: list, key: str) -> float:
    return statistics.fmean(curves[key][-1][1] for curves, _ in runs)


def _splits(config: Path, base: list[str]) -> list[str]:
    """Split the config's SFT data once into training, validation and test files (a fixed shuffle); the
    overrides that point a run at them. Image paths become absolute, as the files move."""
    source = Path(load_config(SFTConfig, config, base).data.path)
    source = source if source.is_absolute() else ROOT / source
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    order = list(range(len(rows)))
    random.Random(SPLIT_SEED).shuffle(order)
    n = max(1, int(len(rows) * SPLIT))
    if len(rows) < 2 * n + 1:
        raise ValueError(f"{source}: {len(rows)} conversations are too few for a validation and a test split")
    parts = {"validation": order[:n], "test": order[n : 2 * n], "train": sorted(order[2 * n :])}
    out = Path(tempfile.mkdtemp(prefix="kvrl-bench-optim-data-"))
    for name, idx in parts.items():
        (out / f"{name}.jsonl").write_text(
            "".join(json.dumps(_absolute(rows[i], source.parent)) + "\n" for i in idx)
        )
    log.info("SFT data %s: %s conversations", source, {k: len(v) for k, v in parts.items()})
    return [
        f"data.path={out / 'train.jsonl'}",
        f"data.eval_path={out / 'validation.jsonl'}",
        f"data.test_path={out / 'test.jsonl'}",
    ]


def _absolute(row: dict, folder: Path) -> dict:
    def fix(path):
        return str(folder / path) if isinstance(path, str) and not Path(path).is_absolute() else path

    row = {**row}
    if isinstance(row.get("images"), list):
        row["images"] = [fix(x) for x in row["images"]]
    for message in row.get("messages", []):
        if isinstance(message.get("content"), list):
            for part in message["content"]:
                if isinstance(part, dict) and "image" in part:
                    part["image"] = fix(part["image"])
    return row


def _phase(lr: float) -> list[str]:
    return [f"schedule=[{{epochs: 1, warmup: 0.05, peak_lr: {lr}, final_lr: {lr / 10}}}]"]


def _tiny_sft(model: str | None) -> list[str]:
    if model is None:
        from kimivl.tiny import make_tiny

        model = str(make_tiny(Path(tempfile.mkdtemp(prefix="kvrl-bench-optim-tiny-")), seed=0))
    return [f"model={model}", "trainer.max_steps=6", "trainer.batch_size=2"]


def _sft(config: Path, overrides: list[str]) -> tuple[dict[str, list[tuple[int, float]]], float]:
    """Train SFT in-process into a fresh directory: its ``eval_loss`` and ``test_loss`` by step,
    ``{key: [(step, loss), ...]}``, and the run's wall seconds."""
    out = Path(tempfile.mkdtemp(prefix="kvrl-bench-optim-")) / "run"
    settings = [f"trainer.output_dir={out}", "tracking.wandb=disabled", f"trainer.eval_every={EVAL_EVERY}"]
    start = time.perf_counter()
    try:
        train_sft(load_config(SFTConfig, config, [*settings, *overrides]))
    finally:
        _ray_down()  # the local Ray is sized by the run that starts it: the RL runs need more CPUs
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {k: [(r["iteration"], r[k]) for r in rows if k in r] for k in ("eval_loss", "test_loss")}, seconds


def _steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((step for step, loss in curve if loss <= target), None)


def _ray_down() -> None:
    import ray

    ray.shutdown()


def _rl_all(demo: Path | None, base: list[str], seeds: list[int]) -> dict:
    """Each optimizer's RL run per seed (the tiny config's without ``demo``); with held-out accuracy (the
    demo's), Muon minus AdamW by seed."""
    runs = {
        name: [_rl_tiny(base, name, seed) if demo is None else _rl(demo, name, seed) for seed in seeds]
        for name in OPTIMIZERS
    }
    accuracy = {name: [r["heldout_accuracy"] for r in runs[name]] for name in OPTIMIZERS}
    gaps = [
        m - a
        for a, m in zip(accuracy["adamw"], accuracy["muon"], strict=True)
        if a is not None and m is not None
    ]
    return {
        **runs,
        "heldout_accuracy": accuracy,
        "accuracy_gaps": gaps,
        "accuracy_gap": statistics.fmean(gaps) if gaps else None,
    }


def _rl_tiny(base: list[str], optimizer: str, seed: int) -> dict:
    """Quick: 2 iterations of the tiny RL config (no held-out evaluation)."""
    model = next(o.split("=", 1)[1] for o in base if o.startswith("model="))
    rows = metric_rows(
        ROOT / "configs" / "tiny" / "rl.yaml",
        [
            f"model={model}",
            "trainer.iterations=2",
            "tracking.samples_every=0",
            f"trainer.seed={seed}",
            f"learner.optimizer={optimizer}",
        ],
    )
    _ray_down()
    rewards = [r["reward_mean"] for r in rows]
    return {"iterations": len(rows), "heldout_accuracy": None, "reward_mean": rewards}


def _rl(demo: Path, optimizer: str, seed: int) -> dict:
    """Held-out accuracy after RL_ITERATIONS RL iterations with ``optimizer`` (and each row's reward)."""
    rows = metric_rows(
        demo / "configs" / "rl.yaml",
        [
            *demo_eval(demo, RL_ITERATIONS),
            f"trainer.iterations={RL_ITERATIONS}",
            f"trainer.save_every={RL_ITERATIONS}",
            f"trainer.seed={seed}",
            f"learner.optimizer={optimizer}",
        ],
    )
    _ray_down()
    accuracy = [v for k, v in rows[-1].items() if k.startswith("tts/budget_")]
    return {
        "iterations": len(rows),
        "heldout_accuracy": accuracy[-1] if accuracy else None,
        "reward_mean": [r["reward_mean"] for r in rows],
        "run_dir": rows[0]["run_dir"],
    }


def _plot(chosen: dict, best: dict, targets: list[float], path: Path) -> Path:
    """Test loss by step at each optimizer's chosen lr, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, runs), colour in zip(chosen.items(), ("tab:blue", "tab:orange"), strict=True):
        for k, curves in enumerate(runs):
            curve = curves["test_loss"]
            label = f"{name} (peak lr {best[name]:g})" if k == 0 else None
            ax.plot(
                [s for s, _ in curve],
                [v for _, v in curve],
                marker=".",
                color=colour,
                alpha=1 - 0.35 * k,
                label=label,
            )
    for k, target in enumerate(targets):
        ax.axhline(target, color="grey", linestyle=":", label="AdamW's final test loss" if k == 0 else None)
    ax.set_yscale("log")
    ax.set(xlabel="optimizer step", ylabel="test-split loss", title="SFT: Muon vs AdamW (kvrl bench optim)")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
