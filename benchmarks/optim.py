"""``kvrl bench optim``: Muon (``learner.optimizer: muon``, Moonlight's scaling) against AdamW, side by side
in one run: SFT on the demo's synthetic task, then a short RL run with each.

SFT: the demo's model and SFT data (its held-out split: 3% of the conversations), one epoch in one LR phase
(5% warm-up, cosine to a tenth of the peak), the same rows in the same order, batch and steps for both;
the held-out loss every ``EVAL_EVERY`` steps. Each optimizer trains at every peak lr of its row of ``LRS``
and keeps the one with the lowest final held-out loss: tuned on a grid of half-decades, in this run (each
grid point is one run, one seed). Each row brackets its optimizer's best lr on this task (a first run on
1e-3..1e-2 put AdamW's at 3e-3 and Muon's at the top, 1e-2, so Muon's row moves up by one point).
Muon's run gives the parameters it does not take (embeddings, ``lm_head``, norms: 26% of the tiny model's)
``MUON_ADAMW_LR_RATIO`` times its lr (``learner.muon_adamw_lr_ratio``), tuned in side runs at Muon's lr
1e-2: ratio 0.3 / 1 / 2 / 3 / 5 / 10 reached AdamW's final loss (0.247) at step 100 / 90 / 80 / 80 / 80 / 105
and ended at 0.199 / 0.178 / 0.179 / 0.151 / 0.152 / 0.198 (at step 75: 0.336 / 0.296 / 0.279 / 0.252 /
0.260 / 0.338). AdamW's run has one lr for all its parameters.
Reported: both curves at their tuned lr (and every grid point), AdamW's final held-out loss L, and the
steps each needs to reach L (the first evaluated step at or below it). The top-level ``ratio`` is
AdamW's steps over Muon's; a Muon that never reaches L counts all its steps (``muon_reached`` false), so
the ratio is then at most 1.

RL: the demo's RL stage (its SFT checkpoint, RL data and config) for ``RL_ITERATIONS`` iterations with each
optimizer at the demo's RL lr (Muon's update RMS matched to AdamW's is what lets both take one lr; Muon's
AdamW part at that lr too, Moonlight's ratio 1), the held-out accuracy after the last (as in ``kvrl bench
pipeline``).

``--model`` names a ``kvrl demo`` directory; without it the demo's stages up to its RL inputs are built once
(``benchmarks.common.demo_inputs``). Quick: the tiny SFT config for a few steps at one lr each and 2 tiny
RL iterations each, a check that it all runs (its figures mean nothing).
"""

from __future__ import annotations

import json
import logging
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
MUON_ADAMW_LR_RATIO = 3.0
EVAL_EVERY = 5
RL_ITERATIONS = 8
PLOT = ROOT / "runs" / "bench" / "optim.png"


def run(quick: bool = False, repeats: int = 1, model: str | None = None) -> list[dict]:
    del repeats  # one run per grid point: the grid is the repetition that matters here
    if quick:
        config, base = ROOT / "configs" / "tiny" / "sft.yaml", _tiny_sft(model)
        lrs = dict.fromkeys(OPTIMIZERS, (3e-3,))
    else:
        demo = demo_inputs(model)
        config, lrs, base = demo / "configs" / "sft.yaml", LRS, []
    timed = {
        name: {lr: _sft(config, [*base, *_phase(lr), *_optimizer(name)]) for lr in lrs[name]}
        for name in OPTIMIZERS
    }
    grid = {name: {lr: curve for lr, (curve, _) in runs.items()} for name, runs in timed.items()}
    best = {name: min(runs, key=lambda lr: runs[lr][-1][1]) for name, runs in grid.items()}
    curves = {name: grid[name][best[name]] for name in OPTIMIZERS}
    target = curves["adamw"][-1][1]
    steps = {name: _steps_to(curves[name], target) for name in OPTIMIZERS}
    muon_reached = steps["muon"] is not None
    muon_steps = steps["muon"] if muon_reached else curves["muon"][-1][0]
    rl = {name: _rl_tiny(base, name) if quick else _rl(demo, name) for name in OPTIMIZERS}
    plot = _plot(curves, best, target, PLOT if not quick else Path(tempfile.mkdtemp()) / "optim.png")
    return [
        result(
            "optim",
            [float(muon_steps)],
            [float(steps["adamw"])],
            "steps to AdamW's final held-out loss",
            higher_is_better=False,
            size=(f"{curves['adamw'][-1][0]} SFT steps" + (" (tiny)" if quick else " (demo SFT)")),
            target_loss=target,
            steps_to_target=steps,
            muon_reached=muon_reached,
            tuned_lr=best,
            lr_grid={name: list(lrs[name]) for name in OPTIMIZERS},
            muon_adamw_lr_ratio=MUON_ADAMW_LR_RATIO,
            final_loss={name: {str(lr): c[-1][1] for lr, c in runs.items()} for name, runs in grid.items()},
            # wall seconds per SFT step of each grid point's run, start-up and held-out evaluations included
            seconds_per_step={
                name: {str(lr): t / c[-1][0] for lr, (c, t) in runs.items()} for name, runs in timed.items()
            },
            curves={name: [{"step": s, "eval_loss": v} for s, v in c] for name, c in curves.items()},
            rl=rl,
            plot=str(plot),
            baseline_description="AdamW (learner.optimizer: adamw) at its own tuned peak lr, same data, "
            "order and steps",
            config=str(config),
        )
    ]


def _optimizer(name: str) -> list[str]:
    ratio = [f"learner.muon_adamw_lr_ratio={MUON_ADAMW_LR_RATIO}"] if name == "muon" else []
    return [f"learner.optimizer={name}", *ratio]


def _phase(lr: float) -> list[str]:
    return [f"schedule=[{{epochs: 1, warmup: 0.05, peak_lr: {lr}, final_lr: {lr / 10}}}]"]


def _tiny_sft(model: str | None) -> list[str]:
    if model is None:
        from kimivl.tiny import make_tiny

        model = str(make_tiny(Path(tempfile.mkdtemp(prefix="kvrl-bench-optim-tiny-")), seed=0))
    return [f"model={model}", "trainer.max_steps=6", "trainer.batch_size=2"]


def _sft(config: Path, overrides: list[str]) -> tuple[list[tuple[int, float]], float]:
    """Train SFT in-process into a fresh directory: its held-out loss by step, ``[(step, loss), ...]``, and
    the run's wall seconds."""
    out = Path(tempfile.mkdtemp(prefix="kvrl-bench-optim-")) / "run"
    settings = [f"trainer.output_dir={out}", "tracking.wandb=disabled", f"trainer.eval_every={EVAL_EVERY}"]
    start = time.perf_counter()
    try:
        train_sft(load_config(SFTConfig, config, [*settings, *overrides]))
    finally:
        _ray_down()  # the local Ray is sized by the run that starts it: the RL runs need more CPUs
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["iteration"], r["eval_loss"]) for r in rows if "eval_loss" in r], seconds


def _steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((step for step, loss in curve if loss <= target), None)


def _ray_down() -> None:
    import ray

    ray.shutdown()


def _rl_tiny(base: list[str], optimizer: str) -> dict:
    """Quick: 2 iterations of the tiny RL config (no held-out evaluation)."""
    model = next(o.split("=", 1)[1] for o in base if o.startswith("model="))
    rows = metric_rows(
        ROOT / "configs" / "tiny" / "rl.yaml",
        [
            f"model={model}",
            "trainer.iterations=2",
            "tracking.samples_every=0",
            f"learner.optimizer={optimizer}",
        ],
    )
    _ray_down()
    rewards = [r["reward_mean"] for r in rows]
    return {"iterations": len(rows), "heldout_accuracy": None, "reward_mean": rewards}


def _rl(demo: Path, optimizer: str) -> dict:
    """Held-out accuracy after RL_ITERATIONS RL iterations with ``optimizer`` (and the last row's reward)."""
    rows = metric_rows(
        demo / "configs" / "rl.yaml",
        [
            *demo_eval(demo, RL_ITERATIONS),
            f"trainer.iterations={RL_ITERATIONS}",
            f"trainer.save_every={RL_ITERATIONS}",
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


def _plot(curves: dict, best: dict, target: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        label = f"{name} (peak lr {best[name]:g}" + (
            f", its AdamW part {MUON_ADAMW_LR_RATIO:g}x)" if name == "muon" else ")"
        )
        ax.plot([s for s, _ in curve], [v for _, v in curve], marker=".", label=label)
    ax.axhline(target, color="grey", linestyle=":", label="AdamW's final held-out loss")
    ax.set_yscale("log")
    ax.set(xlabel="optimizer step", ylabel="held-out loss", title="SFT: Muon vs AdamW (kvrl bench optim)")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
