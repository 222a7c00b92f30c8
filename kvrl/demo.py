"""``kvrl demo``: the whole system, end to end, on a synthetic visual reasoning task, with no downloads.

Stages (each one a ``kvrl`` command run in its own process, with its own log under ``logs/``, so
every stage's vLLM engines and Ray cluster start clean and any stage can be re-run by hand):

1. ``model``: a tiny random-init Kimi-VL (``kvrl tiny``).
2. ``data``: grid images with multi-step counting questions (``kvrl data synth``).
3. ``sft``: long-CoT SFT on the traces (``kvrl sft``, 2 DeepSpeed ranks on Ray).
4. ``difficulty``: each RL problem's difficulty, 1 - pass rate of the SFT model (``kvrl difficulty``).
5. ``rl``: OPMD with the length reward, a curriculum over the measured difficulty and prioritized
   sampling, 2 vLLM rollout engines and 2 learner ranks on Ray (``kvrl rl``); held-out curves during
   training.
   With ``--profile length``, ``rl_nolength`` follows: the same run without the length reward.
6. ``tts``: test-time scaling curves of the SFT and RL checkpoints on the held-out split
   (``kvrl eval tts``, T = 1). The accuracy of a checkpoint is its curve's value at the largest
   budget, which is longer than any trace: thinking is not cut there.
7. ``greedy``: the same checkpoints decoded greedily at the largest budget (``kvrl eval tts
   --temperature 0``): what the policy's argmax does.
8. ``length_eval`` (``--profile length``): the RL checkpoints with and without the length reward,
   sampled ``length_samples`` times per held-out problem at the largest budget (T = 1). The length
   reward's accuracy cost has a 1-point bar; at 4 samples a problem each accuracy's 95% interval is
   about +-3 points, at 16 about +-1.5.

Writes under ``--out``: ``summary.json`` (``sft_accuracy``, ``rl_accuracy``, their greedy twins,
``mean_thinking_tokens``, ``tts`` as ``{checkpoint: {budget: accuracy}}``, ``length_reward`` with
``--profile length``, ``wall_s`` per stage, ``checks``), ``rl_training.png``,
``tts.png``, the stage configs in ``configs/``, the stage logs in ``logs/``, and each stage's run
directory (metrics, wandb offline runs, checkpoints). A run that stopped part-way continues with
the same command: finished stages are not run again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from tqdm import tqdm

from runkit.config import ConfigError, build, read_yaml
from runkit.files import atomic_write
from runkit.plots import plot_training, read_metrics
from runkit.provenance import write_run_info

log = logging.getLogger(__name__)

# The learning checks a profile can be judged by (summarize() computes them; their bars are in CHECKS).
LearningCheck = Literal[
    "sft_accuracy_at_least",
    "rl_gain_at_least",
    "rl_greedy_gain_at_least",
    "rl_tts_rise_at_least",
]
LEARNING_CHECKS: tuple[str, ...] = get_args(LearningCheck)
STAGES = ("model", "data", "sft", "difficulty", "rl", "rl_nolength", "tts", "greedy", "length_eval")
LENGTH_STAGES = ("rl_nolength", "length_eval")  # only with length_ablation
STATE_FILE = "demo_state.json"


@dataclass
class Profile:
    """The sizes of one demo run (``configs/demo/profiles.yaml``); ``full`` shows real learning,
    ``quick`` checks the plumbing, ``length`` is ``full`` plus an RL run without the length reward, ``muon``
    is ``full`` trained with Muon."""

    name: str
    train: int
    heldout: int
    hasty: float
    recheck: float
    sft_schedule: list[dict]
    sft_batch_size: int
    rl_pool: int
    difficulty_k: int
    rl_iterations: int
    rl_prompts: int
    rl_samples: int
    rl_lr: float
    rl_eval_every: int
    length_weight: float
    tts_samples: int
    budgets: list[int] = field(default_factory=lambda: [32, 64, 96, 128, 192])
    hidden_size: int = 64
    length_ablation: bool = False
    # responses per held-out problem in the length reward's comparison (largest budget, T = 1)
    length_samples: int = 16
    optimizer: Literal["adamw", "muon"] = "adamw"  # learner.optimizer of the SFT and RL stages
    # the learning checks (LEARNING_CHECKS) this profile is judged by; the length checks come with
    # length_ablation
    checks: list[LearningCheck] = field(default_factory=lambda: list(LEARNING_CHECKS))
    seed: int = 0

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(s for s in STAGES if s not in LENGTH_STAGES or self.length_ablation)


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"  # profiles and stage templates


def _merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` written over it, section by section."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def load_profiles(path: Path = CONFIGS / "profiles.yaml") -> dict[str, Profile]:
    """Every profile of ``profiles.yaml``, checked against :class:`Profile` (a profile's ``base`` is
    another profile it changes)."""
    raw = read_yaml(path)
    profiles: dict[str, Profile] = {}
    for name, entry in raw.items():
        entry = dict(entry)
        base = entry.pop("base", None)
        if base is not None:
            if base not in raw:
                raise ConfigError(f"{path}: {name}.base: no profile {base!r}")
            entry = _merged({k: v for k, v in raw[base].items() if k != "base"}, entry)
        try:
            profiles[name] = build(Profile, {"name": name, **entry})
        except ConfigError as e:
            raise ConfigError(f"{path}: profile {name}: {e}") from e
    return profiles


PROFILES = load_profiles()
FULL = PROFILES["full"]

# The learning proof (full and length profiles; the bars): accuracies are fractions.
CHECKS = {
    "sft_min": 0.25,  # sampled held-out accuracy of the SFT model: a fair starting point
    "rl_gain_min": 0.10,  # sampled (T = 1), RL - SFT
    "rl_greedy_gain_min": 0.10,  # greedy (T = 0), RL - SFT
    "tts_rise_min": 0.10,  # RL curve, largest budget - smallest
    "length_shorter_min": 0.20,  # thinking tokens, 1 - with / without the length reward
    "length_cost_max": 0.01,  # accuracy without the length reward - with it
}


class DemoError(RuntimeError):
    """A stage failed; the message names the stage, its command and the end of its log."""


class DemoPaths:
    """Where each stage reads and writes, under ``--out``."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.model, self.data, self.sft, self.tts, self.greedy, self.length_eval, self.logs, self.configs = (
            self.out / name
            for name in ("model", "data", "sft", "tts", "greedy", "length_eval", "logs", "configs")
        )
        self.rl_runs = {"rl": self.out / "rl", "rl_nolength": self.out / "rl_nolength"}
        self.rl = self.rl_runs["rl"]
        self.sft_ckpt = self.out / "checkpoints" / "sft"  # links to the stages' checkpoints
        self.rl_ckpts = {name: self.out / "checkpoints" / name for name in self.rl_runs}
        self.rl_pool = self.data / "rl_pool.jsonl"
        self.rl_train = self.data / "rl_train.jsonl"
        self.heldout = self.data / "heldout.jsonl"


def sft_config(p: Profile, paths: DemoPaths) -> dict[str, Any]:
    """``configs/demo/sft.yaml`` with the profile's sizes and the run's paths."""
    return _merged(
        read_yaml(CONFIGS / "sft.yaml"),
        {
            "model": str(paths.model),
            "data": {"path": str(paths.data / "sft_train.jsonl")},
            "trainer": {"output_dir": str(paths.sft), "seed": p.seed, "batch_size": p.sft_batch_size},
            "schedule": p.sft_schedule,
            "learner": {"optimizer": p.optimizer},
            "tracking": {"run_name": f"demo-{p.name}-sft"},
        },
    )


def rl_config(p: Profile, paths: DemoPaths, stage: str = "rl") -> dict[str, Any]:
    """``configs/demo/rl.yaml`` with the profile's sizes and the run's paths; ``stage="rl_nolength"``:
    the same run without the length reward."""
    length_weight = 0.0 if stage == "rl_nolength" else p.length_weight
    # k1.5 sec. 2.3.3: the length reward waits for a warm-up, so that it does not favour short answers
    # before the model has learnt which ones are right; the learning rate warms up as long.
    warmup = max(1, p.rl_iterations // 4)
    return _merged(
        read_yaml(CONFIGS / "rl.yaml"),
        {
            "model": str(paths.sft_ckpt),
            "data": {"path": str(paths.rl_train)},
            "trainer": {
                "iterations": p.rl_iterations,
                "output_dir": str(paths.rl_runs[stage]),
                "seed": p.seed,
                "prompts_per_iteration": p.rl_prompts,
                "save_every": p.rl_iterations,
            },
            "learner": {"lr": p.rl_lr, "warmup_steps": warmup, "optimizer": p.optimizer},
            "rollout": {"sampling": {"n": p.rl_samples, "max_tokens": max(p.budgets)}},
            "rewards": {"length": {"weight": length_weight, "warmup_iterations": warmup}},
            "curriculum": {"ramp_iterations": max(1, p.rl_iterations // 3)},
            "tracking": {"run_name": f"demo-{p.name}-{stage.replace('_', '-')}"},
            "eval": {
                "tts_every": p.rl_eval_every,
                "data": str(paths.heldout),
                "max_samples": p.heldout,
                "budgets": p.budgets,
            },
        },
    )


def _argv(command: str, **flags: Any) -> list[str]:
    """``_argv("eval tts", answer_tokens=16, checkpoint=[a, b])`` -> kvrl arguments; lists repeat."""
    out = command.split()
    for name, value in flags.items():
        for v in value if isinstance(value, list) else [value]:
            out += [f"--{name.replace('_', '-')}", str(v)]
    return out


def stage_commands(p: Profile, paths: DemoPaths) -> dict[str, list[str]]:
    checkpoints = [paths.sft_ckpt, *(link for name, link in paths.rl_ckpts.items() if name in p.stages)]
    eval_flags = {"checkpoint": checkpoints, "data": paths.heldout, "answer_tokens": 16, "seed": p.seed}
    commands = {
        "model": _argv("tiny", out=paths.model, seed=p.seed, hidden_size=p.hidden_size),
        "data": _argv(
            "data synth",
            out=paths.data,
            n=p.train,
            heldout=p.heldout,
            hasty=p.hasty,
            recheck=p.recheck,
            seed=p.seed,
        ),
        "sft": _argv("sft", config=paths.configs / "sft.yaml"),
        "difficulty": _argv(
            "difficulty",
            checkpoint=paths.sft_ckpt,
            data=paths.rl_pool,
            k=p.difficulty_k,
            max_tokens=max(p.budgets),
            out=paths.rl_train,
            seed=p.seed,
        ),
        "rl": _argv("rl", config=paths.configs / "rl.yaml"),
        "rl_nolength": _argv("rl", config=paths.configs / "rl_nolength.yaml"),
        # every budget of the curves, sampled at T = 1 as RL samples
        "tts": _argv(
            "eval tts",
            budgets=",".join(map(str, p.budgets)),
            samples=p.tts_samples,
            out=paths.tts,
            **eval_flags,
        ),
        # what the policy's argmax does: greedy, at the largest budget
        "greedy": _argv(
            "eval tts", budgets=max(p.budgets), samples=1, temperature=0, out=paths.greedy, **eval_flags
        ),
        # the length reward's accuracy cost, sampled at T = 1 often enough for a 1-point bar
        "length_eval": _argv(
            "eval tts",
            budgets=max(p.budgets),
            samples=p.length_samples,
            out=paths.length_eval,
            **(eval_flags | {"checkpoint": [paths.rl_ckpts["rl"], paths.rl_ckpts["rl_nolength"]]}),
        ),
    }
    return {stage: commands[stage] for stage in p.stages}


def _write_config(path: Path, config: dict, command: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Written by kvrl demo. Re-run this stage alone with:\n#   kvrl {command}\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _link(link: Path, target: Path) -> None:
    """``checkpoints/<name>`` -> the stage's checkpoint, so curves and tables say 'sft' and 'rl'."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)


def _before(stage: str, p: Profile, paths: DemoPaths) -> None:
    """What a stage needs that no kvrl command makes: the RL pool, the checkpoint links."""
    if stage == "difficulty":
        lines = (paths.data / "train.jsonl").read_text(encoding="utf-8").splitlines()
        paths.rl_pool.write_text("\n".join(lines[: p.rl_pool]) + "\n", encoding="utf-8")
        _link(paths.sft_ckpt, paths.sft / "final")
    if stage == "tts":
        for name, run in paths.rl_runs.items():
            if name in p.stages:
                latest = (run / "checkpoints" / "latest").read_text().strip()
                _link(paths.rl_ckpts[name], run / "checkpoints" / latest)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# A tqdm bar as drawn in a log: each draw follows a \r or \n and starts with the whole description.
_BAR = re.compile(r"(?P<desc>[^|]+?):\s*(?P<pct>\d+%)\|[^|]*\|\s*(?P<count>\d+/(?P<total>\d+))")
# A line logged in kvrl's format (kvrl.cli.main): "2026-01-31 12:00:00,000 INFO name: message".
_LOGGED = re.compile(r"\d{4}-\d\d-\d\d [\d:,]+ (?:INFO|WARNING) [\w.]+: (?P<message>.+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colours and cursor moves (Ray's prefixes, nested bars)
_LABEL = 48  # characters of a label at most


def _label(text: str, keep_end: bool) -> str:
    """``text`` cut to :data:`_LABEL` characters: in the middle (``tokenizing …/data/sft_train.jsonl``,
    a path's end tells most) or at the end."""
    if len(text) <= _LABEL:
        return text
    if not keep_end:
        return text[: _LABEL - 1] + "…"
    head = text.split(" ", 1)[0][: _LABEL // 2]
    return f"{head} …{text[len(text) - (_LABEL - len(head) - 2) :]}"


def last_progress(log_path: Path) -> str | None:
    """What a stage is doing, from the end of its log: the outermost running tqdm bar (of the unfinished
    ones, the one with the most steps: RL iterations, not one iteration's phases), e.g. ``"SFT steps 77%
    266/344"``. With none running, the newest of the last finished bar (``"tokenizing held-out done"``)
    and the last line kvrl logged (what a stage says between two bars, e.g. while Ray starts)."""
    try:
        size = log_path.stat().st_size
        with open(log_path, "rb") as f:
            f.seek(max(0, size - 16384))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    segments = re.split(r"[\r\n]", tail)
    if size > 16384:
        segments = segments[1:]  # the tail may start inside a line: its first letters are cut off
    bars: dict[str, tuple[int, str, str, int]] = {}  # description -> (segment, percent, count, total)
    note: tuple[int, str] | None = None
    for i, segment in enumerate(segments):
        text = _ANSI.sub("", segment).strip()
        if bar := _BAR.match(text):
            bars[bar["desc"].strip()] = (i, bar["pct"], bar["count"], int(bar["total"]))  # last one wins
        elif logged := _LOGGED.match(text):
            note = (i, logged["message"])
    running = {d: v for d, v in bars.items() if v[1] != "100%"}
    if running:
        desc, (_, pct, count, _) = max(running.items(), key=lambda kv: kv[1][3])
        return f"{_label(desc, keep_end=True)} {pct} {count}"
    done = max(bars.items(), key=lambda kv: kv[1][0], default=None)
    if note is not None and (done is None or note[0] > done[1][0]):
        return _label(note[1], keep_end=False)
    return f"{_label(done[0], keep_end=True)} done" if done else None


def run_stage(name: str, argv: list[str], log_path: Path, progress=None) -> float:
    """Run ``kvrl <argv>`` in a fresh process, output to ``log_path``; seconds, or DemoError.
    ``progress(text)`` is called every few seconds with the stage's own progress bar."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = "kvrl " + " ".join(argv)
    log.info("stage %s: %s (log: %s)", name, command, log_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as f:
        f.write(f"$ {command}\n")
        f.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvrl", *argv], stdout=f, stderr=subprocess.STDOUT, env=env
        )
        try:
            while proc.poll() is None:
                try:
                    proc.wait(timeout=2.0)  # returns as soon as the stage ends
                except subprocess.TimeoutExpired:
                    if progress is not None and (text := last_progress(log_path)):
                        progress(text)
        except BaseException:  # Ctrl-C: the stage stops too (the next run redoes it)
            proc.terminate()
            proc.wait()
            raise
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise DemoError(
            f"stage {name} failed (exit {proc.returncode}) after {seconds:.0f} s: {command}\n"
            f"last lines of {log_path}:\n{_tail(log_path)}"
        )
    return seconds


class DemoState:
    """``demo_state.json``: the profile and the seconds of each finished stage."""

    def __init__(self, out: Path, profile: Profile):
        self.path = out / STATE_FILE
        self.profile = profile
        if self.path.exists():
            try:
                state = json.loads(self.path.read_text())
                state["done"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise FileExistsError(f"{self.path}: unreadable ({e}); choose another --out") from e
            if state.get("profile") != asdict(profile):
                raise FileExistsError(
                    f"--out {out}: holds a demo run with other settings (profile "
                    f"{state.get('profile', {}).get('name')!r}); choose another --out"
                )
            self.done: dict[str, float] = state["done"]
        elif out.exists() and any(out.iterdir()):
            raise FileExistsError(f"--out {out}: exists and is not a kvrl demo run; choose another --out")
        else:
            out.mkdir(parents=True, exist_ok=True)
            self.done = {}
            self._save()

    def finish(self, stage: str, seconds: float) -> None:
        self.done[stage] = seconds
        self._save()

    def _save(self) -> None:
        atomic_write(self.path, json.dumps({"profile": asdict(self.profile), "done": self.done}, indent=2))


def run_demo(
    out: str | Path, profile: str = "full", seed: int = 0, until: str | None = None
) -> dict[str, Any]:
    """Every stage not yet done, then ``summary.json`` and the plots; returns the summary. ``until``: stop
    after that stage (no summary; ``kvrl bench pipeline`` builds the RL stage's inputs so)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown demo profile {profile!r}; choose one of {', '.join(PROFILES)}")
    prof = replace(PROFILES[profile], seed=seed)
    paths = DemoPaths(Path(out))
    state = DemoState(paths.out, prof)
    write_run_info(paths.out, {"command": "demo", "profile": asdict(prof)})
    commands = stage_commands(prof, paths)
    _write_config(paths.configs / "sft.yaml", sft_config(prof, paths), " ".join(commands["sft"]))
    for stage in paths.rl_runs:
        if stage in prof.stages:
            config = rl_config(prof, paths, stage)
            _write_config(paths.configs / f"{stage}.yaml", config, " ".join(commands[stage]))
    stages = prof.stages[: prof.stages.index(until) + 1] if until else prof.stages
    # counted by hand: an iterating bar shows a stale count after stages skipped in a blink
    bar = tqdm(total=len(stages), desc=f"kvrl demo ({prof.name}, seed {seed})", unit="stage")
    for stage in stages:
        bar.set_postfix_str(stage)
        if stage in state.done:
            log.info("stage %s: done in an earlier run (%.0f s), skipped", stage, state.done[stage])
            bar.update()
            continue
        if stage in (
            "sft",
            *paths.rl_runs,
        ):  # a stage killed part-way left a run the trainers won't overwrite
            shutil.rmtree(paths.sft if stage == "sft" else paths.rl_runs[stage], ignore_errors=True)
        _before(stage, prof, paths)
        seconds = run_stage(
            stage,
            commands[stage],
            paths.logs / f"{stage}.log",
            progress=lambda text, stage=stage: bar.set_postfix_str(f"{stage}: {text}"),
        )
        state.finish(stage, seconds)
        bar.update()
    bar.close()
    if until:
        return {}
    summary = summarize(prof, paths, state.done, commands)
    atomic_write(paths.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _points(tts_json: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """``{checkpoint name: {budget: point}}`` from a ``kvrl eval tts`` output."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for pt in json.loads(tts_json.read_text())["points"]:
        out.setdefault(Path(pt["checkpoint"]).name, {})[int(pt["budget"])] = pt
    return out


def _check(value: float, bar: float, at_most: bool = False) -> dict[str, Any]:
    return {
        "bar": bar,
        "value": value,
        "at_most": at_most,
        "passed": value <= bar if at_most else value >= bar,
    }


def summarize(p: Profile, paths: DemoPaths, wall: dict[str, float], commands: dict) -> dict[str, Any]:
    """The summary from the stages' own outputs: tts.json for accuracies, RL metrics for the plot."""
    sampled, greedy = _points(paths.tts / "tts.json"), _points(paths.greedy / "tts.json")
    largest = max(p.budgets)
    tts = {
        name: {str(b): pt["accuracy"] for b, pt in sorted(curve.items())} for name, curve in sampled.items()
    }
    acc = {name: curve[largest]["accuracy"] for name, curve in sampled.items()}
    greedy_acc = {name: curve[largest]["accuracy"] for name, curve in greedy.items()}
    thinking = {name: curve[largest]["mean_thinking_tokens"] for name, curve in sampled.items()}
    rl_curve = [sampled["rl"][b]["accuracy"] for b in sorted(p.budgets)]
    rows = read_metrics(paths.rl / "metrics.jsonl")
    title = (
        f"kvrl demo ({p.name}): RL with OPMD, {p.rl_prompts} prompts x {p.rl_samples} samples per iteration"
    )
    plot = plot_training(rows, paths.out / "rl_training.png", title=title)
    shutil.copyfile(paths.tts / "tts.png", paths.out / "tts.png")
    learning = {
        "sft_accuracy_at_least": _check(acc["sft"], CHECKS["sft_min"]),
        "rl_gain_at_least": _check(acc["rl"] - acc["sft"], CHECKS["rl_gain_min"]),
        "rl_greedy_gain_at_least": _check(greedy_acc["rl"] - greedy_acc["sft"], CHECKS["rl_greedy_gain_min"]),
        "rl_tts_rise_at_least": _check(rl_curve[-1] - rl_curve[0], CHECKS["tts_rise_min"]),
    }
    checks = {name: learning[name] for name in p.checks}
    summary: dict[str, Any] = {
        "profile": p.name,
        "seed": p.seed,
        "heldout_problems": p.heldout,
        "samples_per_problem": p.tts_samples,
        "temperature": 1.0,
        "accuracy_budget": largest,
        "sft_accuracy": acc["sft"],
        "rl_accuracy": acc["rl"],
        "sft_greedy_accuracy": greedy_acc["sft"],
        "rl_greedy_accuracy": greedy_acc["rl"],
        "mean_thinking_tokens": thinking,
        "tts": tts,
        "rl_iterations": len(rows),
    }
    if p.length_ablation:
        fine = _points(paths.length_eval / "tts.json")
        with_, without = fine["rl"][largest], fine["rl_nolength"][largest]
        shorter = 1.0 - with_["mean_thinking_tokens"] / without["mean_thinking_tokens"]
        cost = without["accuracy"] - with_["accuracy"]
        summary["length_reward"] = {
            "weight": p.length_weight,
            "samples_per_problem": p.length_samples,
            "mean_thinking_tokens": {
                "with": with_["mean_thinking_tokens"],
                "without": without["mean_thinking_tokens"],
            },
            "accuracy": {"with": with_["accuracy"], "without": without["accuracy"]},
            "accuracy_ci95": {
                "with": [with_["ci_low"], with_["ci_high"]],
                "without": [without["ci_low"], without["ci_high"]],
            },
            "greedy_accuracy": {"with": greedy_acc["rl"], "without": greedy_acc["rl_nolength"]},
            "shorter": shorter,
        }
        checks["length_reward_shorter_at_least"] = _check(shorter, CHECKS["length_shorter_min"])
        checks["length_reward_accuracy_cost_at_most"] = _check(cost, CHECKS["length_cost_max"], at_most=True)
    summary |= {
        "wall_s": {**{s: wall[s] for s in p.stages}, "total": sum(wall[s] for s in p.stages)},
        "checks": checks,
        "plots": {"rl": str(plot), "tts": str(paths.out / "tts.png")},
        "commands": {s: "kvrl " + " ".join(c) for s, c in commands.items()},
    }
    return summary
