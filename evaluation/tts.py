"""Test-time scaling curves: accuracy against the thinking budget (Kimi-VL report, Fig. 13).

Used by ``kvrl eval tts`` (checkpoints on disk, one in-process vLLM engine each) and by the RL driver
(``eval.tts_every``: the rollout pool, which already holds the current weights). Both hand
:func:`run_curve` a ``generate`` function (``RolloutWorker.generate`` or ``RolloutPool.generate``) and
a ``verify`` function (a verifier pool), so the curve is computed the same way in both.

Every prompt ends with ``◁think▷``: each response starts inside its thinking section, as a
Kimi-VL-Thinking response does, so the budget always applies. Per budget b (see ``evaluation.curves``):

- ``truncate``: a thinking section still open after b tokens scores 0 (the report's reading). ONE
  generation with room for ``max(budgets) + answer_tokens`` tokens serves every budget: each is a cut
  of the same token stream (:func:`evaluation.curves.cut_at_budget`), the answer bounded to ``answer_tokens``
  after ``◁/think▷``. ``naive=True`` generates per budget instead (the baseline; same result).
- ``force``: budget forcing with the rollout worker's two-phase thinking budget: at b tokens
  ``◁/think▷`` is appended and the model answers in at most ``answer_tokens`` more (one generation
  per budget, all prompts in one batch each).

Prompts carry a seed derived from (seed, problem id), so every budget, every checkpoint and every
eval during training sample with the same random numbers; comparisons between them are paired.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from corpus.problems import Problem, load_problems
from evaluation.curves import (
    CSV_COLUMNS,
    BudgetCut,
    CurvePoint,
    Outcome,
    curve_point,
    cut_at_budget,
    format_budget,
)
from kimivl import KimiVLProcessor
from kimivl.processing import load_image
from rewards import DEFAULT_VERIFIER, THINK_CLOSE, THINK_OPEN, Task, Verdict, VerifierPool, problem_task
from rollout.engine import EngineConfig
from rollout.prompts import chat_prompt
from rollout.worker import RolloutRequest, RolloutResult, RolloutWorker, SamplingConfig
from runkit.files import atomic_write, replacing
from runkit.tracking import Tracker, TrackingConfig

log = logging.getLogger(__name__)

Generate = Callable[[list[RolloutRequest], SamplingConfig], list[RolloutResult]]
Verify = Callable[[list[Task]], list[Verdict]]
Mode = Literal["truncate", "force"]


@dataclass
class CurveConfig:
    """How one curve is measured."""

    budgets: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    mode: Mode = "truncate"
    answer_tokens: int = 32  # tokens allowed after ◁/think▷ (both modes)
    samples: int = 1  # responses per problem
    k: int = 1  # pass@k
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not self.budgets or min(self.budgets) < 1:
            raise ValueError(f"budgets must be a non-empty list of token counts >= 1, got {self.budgets}")
        self.budgets = sorted(set(self.budgets))
        if self.mode not in ("truncate", "force"):
            raise ValueError(f"mode must be 'truncate' or 'force', got {self.mode!r}")
        if self.answer_tokens < 1:
            raise ValueError(f"answer_tokens must be >= 1, got {self.answer_tokens}")
        if self.k < 1 or self.samples < self.k:
            raise ValueError(f"need 1 <= k <= samples, got k={self.k}, samples={self.samples}")

    def max_new_tokens(self) -> int:
        """Longest response either mode can produce: thinking, ◁/think▷, answer."""
        return max(self.budgets) + 1 + self.answer_tokens

    def truncate_sampling(self, budget: int) -> SamplingConfig:
        # cut_at_budget reads at most budget + answer_tokens tokens.
        return SamplingConfig(
            n=self.samples,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=budget + self.answer_tokens,
        )

    def force_sampling(self, budget: int) -> SamplingConfig:
        return SamplingConfig(
            n=self.samples,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=budget + 1 + self.answer_tokens,
            thinking_budget=budget,
            answer_tokens=self.answer_tokens,
            always_answer=True,
        )


@dataclass
class EvalConfig:
    """The RL driver's ``eval`` section: a curve every ``tts_every`` iterations (0: off) on the first
    ``max_samples`` problems of ``data`` (default: the training data), after the weight sync."""

    tts_every: int = 0
    data: str = ""
    max_samples: int = 32
    budgets: list[int] = field(default_factory=lambda: [16, 32, 64])
    mode: Mode = "truncate"
    answer_tokens: int = 16
    samples: int = 1
    k: int = 1
    temperature: float = 1.0

    def __post_init__(self):
        if self.tts_every < 0 or self.max_samples < 1:
            raise ValueError(
                f"tts_every must be >= 0 and max_samples >= 1, got {self.tts_every}, {self.max_samples}"
            )
        self.curve(0)  # the curve settings fail here, at load time

    def curve(self, seed: int) -> CurveConfig:
        return CurveConfig(
            budgets=list(self.budgets),
            mode=self.mode,
            answer_tokens=self.answer_tokens,
            samples=self.samples,
            k=self.k,
            temperature=self.temperature,
            seed=seed,
        )


@dataclass(frozen=True)
class Record:
    """One response under one budget, scored (its tokens are not kept: a large eval holds many)."""

    budget: int
    problem: int
    sample: int
    thinking_tokens: int
    truncated: bool
    correct: bool


@dataclass
class CurveResult:
    points: list[CurvePoint]
    records: list[Record]
    generation_s: float
    verify_s: float


# -- one curve -----------------------------------------------------------------------------------


def eval_prompt(processor, problem: Problem) -> str:
    """The chat prompt with ``◁think▷`` pre-filled: the response starts inside its thinking."""

    return chat_prompt(processor, problem.question, len(problem.images)) + THINK_OPEN


def eval_requests(problems: Sequence[Problem], processor, seed: int) -> list[RolloutRequest]:
    return [
        RolloutRequest(
            f"tts-{i}",
            eval_prompt(processor, p),
            list(p.images),
            seed=zlib.crc32(f"{seed}:tts:{p.id}".encode()),
        )
        for i, p in enumerate(problems)
    ]


def prompt_lengths(problems: Sequence[Problem], processor) -> list[int]:
    """Prompt tokens of each eval prompt, image placeholders expanded (to size the engine's context)."""

    lengths = []
    for p in problems:
        images = [load_image(im, i) for i, im in enumerate(p.images)]
        enc = processor(text=eval_prompt(processor, p), images=images or None)
        lengths.append(len(enc["input_ids"][0]))
    return lengths


def _cuts(
    results: list[RolloutResult], budget: int, close_id: int, answer_tokens: int
) -> list[list[BudgetCut]]:
    return [
        [
            cut_at_budget(s.response_token_ids, budget, close_id, answer_tokens, s.finish_reason == "stop")
            for s in r.samples
        ]
        for r in results
    ]


def _forced_cuts(results: list[RolloutResult], close_id: int) -> list[list[BudgetCut]]:
    """Force-mode responses as cuts: thinking up to the (sampled or forced) ◁/think▷, truncated if forced."""
    out = []
    for r in results:
        row = []
        for s in r.samples:
            ids = tuple(s.response_token_ids)
            thinking = ids.index(close_id) if close_id in ids else len(ids)
            row.append(BudgetCut(ids, thinking, bool(s.forced) or close_id not in ids))
        out.append(row)
    return out


def generate_cuts(
    requests: list[RolloutRequest], generate: Generate, cfg: CurveConfig, close_id: int, naive: bool = False
) -> dict[int, list[list[BudgetCut]]]:
    """Per budget, per problem, per sample: the response as that budget sees it."""
    if cfg.mode == "force":
        return {
            b: _forced_cuts(generate(requests, cfg.force_sampling(b)), close_id)
            for b in tqdm(cfg.budgets, desc="force: one generation per budget", leave=False)
        }
    if naive:
        return {
            b: _cuts(generate(requests, cfg.truncate_sampling(b)), b, close_id, cfg.answer_tokens)
            for b in tqdm(cfg.budgets, desc="truncate: one generation per budget", leave=False)
        }
    results = generate(requests, cfg.truncate_sampling(max(cfg.budgets)))
    return {b: _cuts(results, b, close_id, cfg.answer_tokens) for b in cfg.budgets}


def score_cuts(
    cuts: dict[int, list[list[BudgetCut]]],
    problems: Sequence[Problem],
    tokenizer,
    verify: Verify,
    default_verifier: str,
) -> list[Record]:
    """Verify every response that has an answer section, each distinct one once (in truncate mode a
    response closed at p is the same under every budget > p); no ◁/think▷ scores 0 uncalled."""
    close_id = tokenizer.convert_tokens_to_ids(THINK_CLOSE)
    texts: dict[tuple[int, ...], str] = {}
    tasks: dict[Task, int] = {}
    keys = []
    for b, per_problem in cuts.items():
        for i, samples in enumerate(per_problem):
            p = problems[i]
            for j, cut in enumerate(samples):
                task = None
                if close_id in cut.token_ids:
                    if cut.token_ids not in texts:
                        texts[cut.token_ids] = THINK_OPEN + tokenizer.decode(
                            list(cut.token_ids), skip_special_tokens=True
                        )
                    task = problem_task(
                        texts[cut.token_ids], p.answer, p.verifier or default_verifier, p.question, p.columns
                    )
                    tasks.setdefault(task, len(tasks))
                keys.append((b, i, j, cut, task))
    verdicts = verify(list(tasks)) if tasks else []
    return [
        Record(
            b, i, j, cut.thinking_tokens, cut.truncated, task is not None and verdicts[tasks[task]].correct
        )
        for b, i, j, cut, task in keys
    ]


def curve_points(records: Sequence[Record], cfg: CurveConfig, label: str) -> list[CurvePoint]:
    by_budget: dict[int, list[Outcome]] = {b: [] for b in cfg.budgets}
    for r in records:
        by_budget[r.budget].append(Outcome(r.problem, r.thinking_tokens, r.truncated, r.correct))
    return [curve_point(label, b, cfg.mode, by_budget[b], cfg.k) for b in cfg.budgets]


def run_curve(
    problems: Sequence[Problem],
    processor,
    generate: Generate,
    verify: Verify,
    cfg: CurveConfig,
    label: str,
    default_verifier: str = DEFAULT_VERIFIER,
    naive: bool = False,
) -> CurveResult:
    """One test-time scaling curve: generate (one batch of all prompts per generation), cut, score."""
    if not problems:
        raise ValueError("no problems to evaluate")
    close_id = processor.tokenizer.convert_tokens_to_ids(THINK_CLOSE)
    start = time.perf_counter()
    cuts = generate_cuts(eval_requests(problems, processor, cfg.seed), generate, cfg, close_id, naive)
    generation_s = time.perf_counter() - start
    records = score_cuts(cuts, problems, processor.tokenizer, verify, default_verifier)
    points = curve_points(records, cfg, label)
    verify_s = time.perf_counter() - start - generation_s
    for pt in points:
        log.info(
            "tts %s budget %d (%s): accuracy %.3f [%.3f, %.3f], thinking %.1f, truncated %.3f",
            label,
            pt.budget,
            pt.mode,
            pt.accuracy,
            pt.ci_low,
            pt.ci_high,
            pt.mean_thinking_tokens,
            pt.truncation_rate,
        )
    return CurveResult(points, records, generation_s, verify_s)


# -- outputs ---------------------------------------------------------------------------------------


def short_labels(names: Sequence[str]) -> dict[str, str]:
    """Legend labels: the last path component, or more of the path where that is ambiguous."""
    for depth in (1, 2, 3):
        labels = {n: "/".join(Path(n).parts[-depth:]) or n for n in names}
        if len(set(labels.values())) == len(set(names)):
            return labels
    return {n: n for n in names}


def _series(points: Sequence[CurvePoint]) -> dict[str, list[CurvePoint]]:
    series: dict[str, list[CurvePoint]] = {}
    for p in points:
        series.setdefault(p.checkpoint, []).append(p)
    return {k: sorted(v, key=lambda p: p.budget) for k, v in series.items()}


def plot_curves(points: Sequence[CurvePoint], path: Path, title: str) -> Path:
    """Accuracy vs. budget, one line per checkpoint, log2 budget axis, 95% CI as error bars and band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    series = _series(points)
    labels = short_labels(list(series))
    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    budgets = sorted({p.budget for p in points})
    for k, (name, pts) in enumerate(series.items()):
        # Lines side by side, not on top of each other: each is shifted by a few hundredths of a log2
        # step (the ticks stay at the true budgets).
        dodge = 2 ** (0.04 * (k - (len(series) - 1) / 2))
        xs = [p.budget * dodge for p in pts]
        ys = [p.accuracy for p in pts]
        lows, highs = [p.ci_low for p in pts], [p.ci_high for p in pts]
        yerr = [
            [y - lo for y, lo in zip(ys, lows, strict=True)],
            [h - y for y, h in zip(ys, highs, strict=True)],
        ]
        bars = ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=4, linewidth=1.8, label=labels[name])
        ax.fill_between(xs, lows, highs, alpha=0.12, color=bars[0].get_color(), linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [format_budget(b) for b in budgets])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(budgets) == 1:
        ax.set_xlim(budgets[0] / 2, budgets[0] * 2)
    top = min(1.0, math.ceil((max(p.ci_high for p in points) + 0.05) * 10) / 10)  # room for the CIs
    ax.set_ylim(-0.03 * top, top + 0.03 * top)
    ax.set_xlabel("thinking budget (tokens, log2 scale)")
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title="checkpoint", loc="best", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_outputs(
    out: Path, points: Sequence[CurvePoint], meta: dict[str, Any], title: str
) -> dict[str, Path]:
    """``tts.csv`` (columns ``evaluation.curves.CSV_COLUMNS``), ``tts.json`` (``meta`` + ``points``)
    and ``tts.png``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [p.row() for p in points]
    with replacing(out / "tts.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write(out / "tts.json", json.dumps({**meta, "points": rows}, indent=2) + "\n")
    plot_curves(points, out / "tts.png", title)
    return {"csv": out / "tts.csv", "json": out / "tts.json", "png": out / "tts.png"}


def wandb_series(points: Sequence[CurvePoint]) -> dict[str, tuple[list[float], list[float]]]:
    """Per checkpoint, (log2 budget, accuracy): wandb line plots have no log axis of their own."""
    labels = short_labels(list(_series(points)))
    return {
        labels[name]: ([math.log2(p.budget) for p in pts], [p.accuracy for p in pts])
        for name, pts in _series(points).items()
    }


# -- kvrl eval tts ---------------------------------------------------------------------------------


COMPARE_REPEATS = 3  # --compare-naive: timed passes of each kind


@dataclass
class TTSJob:
    checkpoints: list[str]
    data: str
    curve: CurveConfig
    out: str = "runs/tts"
    max_samples: int | None = None  # the first N problems
    verifier: str = DEFAULT_VERIFIER  # for rows without a verifier column
    max_model_len: int | None = None  # default: longest prompt + largest budget + answer
    compare_naive: bool = False  # also generate per budget; check the curves match; time both
    wandb: Literal["offline", "online", "disabled"] = "offline"
    workers: int = 2

    def __post_init__(self):
        if not self.checkpoints:
            raise ValueError("--checkpoint: give at least one checkpoint directory")
        for c in self.checkpoints:
            if not Path(c).is_dir():
                raise FileNotFoundError(f"--checkpoint: {c} is not a directory")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"--max-samples must be >= 1, got {self.max_samples}")
        if self.compare_naive and self.curve.mode != "truncate":
            raise ValueError("--compare-naive: only --mode truncate has a one-generation path to compare")


def _compare_naive(problems, worker, cfg: CurveConfig) -> dict[str, Any]:
    """Generation seconds of the one generation and of per-budget generation, and whether every cut
    stream is the same. The engine is warm (the curve ran); the passes alternate and the fastest of
    each kind counts (other load on the machine only ever adds time)."""
    requests = eval_requests(problems, worker.processor, cfg.seed)
    times: dict[bool, list[float]] = {True: [], False: []}
    reference, matches = None, True
    for _ in range(COMPARE_REPEATS):
        for naive in (True, False):
            start = time.perf_counter()
            cuts = generate_cuts(requests, worker.generate, cfg, worker.think_close, naive=naive)
            times[naive].append(time.perf_counter() - start)
            reference = reference or cuts
            matches = matches and cuts == reference
    if not matches:
        log.warning("per-budget generation differs from the cut one-generation streams")
    t_naive, t_one = min(times[True]), min(times[False])
    return {
        "naive_generation_s": t_naive,
        "one_generation_warm_s": t_one,
        "naive_over_one_generation": t_naive / max(t_one, 1e-9),
        "naive_matches": matches,
    }


def _eval_checkpoint(job: TTSJob, checkpoint: str, problems, verify: Verify) -> tuple[CurveResult, dict]:

    cfg = job.curve
    max_len = job.max_model_len
    if max_len is None:
        longest = max(prompt_lengths(problems, KimiVLProcessor.from_pretrained(checkpoint)))
        max_len = -(-(longest + cfg.max_new_tokens()) // 16) * 16
    start = time.perf_counter()
    worker = RolloutWorker(EngineConfig(model=checkpoint, seed=cfg.seed, max_model_len=max_len))
    timing: dict[str, Any] = {"checkpoint": checkpoint, "engine_start_s": time.perf_counter() - start}
    try:
        result = run_curve(problems, worker.processor, worker.generate, verify, cfg, checkpoint, job.verifier)
        timing["generation_s"] = result.generation_s
        if job.compare_naive:
            timing.update(_compare_naive(problems, worker, cfg))
    finally:
        worker.shutdown()
    return result, timing


def run_tts_job(job: TTSJob) -> dict[str, Any]:
    """Curves for every checkpoint -> ``tts.csv/json/png`` under ``job.out`` and a wandb line plot."""

    problems = load_problems(job.data).problems[: job.max_samples]
    cfg = job.curve
    points: list[CurvePoint] = []
    timings = []
    start = time.perf_counter()
    with VerifierPool(workers=job.workers) as pool:
        for checkpoint in tqdm(job.checkpoints, desc="tts checkpoints", unit="ckpt"):
            result, timing = _eval_checkpoint(job, checkpoint, problems, pool.verify)
            points += result.points
            timings.append(timing)
    meta = {
        "data": job.data,
        "problems": len(problems),
        "checkpoints": list(job.checkpoints),
        **{k: v for k, v in asdict(cfg).items()},
        "generation": "per budget" if cfg.mode == "force" else "one generation at the largest budget",
        "prompt": "chat template + ◁think▷ (responses start inside their thinking)",
        "timing": timings,
        "wall_s": time.perf_counter() - start,
    }
    title = (
        f"Test-time scaling ({cfg.mode}, {len(problems)} problems × {cfg.samples}, "
        f"answer ≤ {cfg.answer_tokens} tokens)"
    )
    paths = write_outputs(Path(job.out), points, meta, title)
    tracker = Tracker(Path(job.out), TrackingConfig(wandb=job.wandb, run_name="tts"), {"tts": meta})
    try:
        tracker.log_line_plot("tts/curve", wandb_series(points), title=title, xname="log2 thinking budget")
        tracker.log_table("tts/points", [p.row() for p in points])
    finally:
        tracker.finish()
    return {"points": points, "paths": paths, "timing": timings, "problems": len(problems)}


# -- during RL ---------------------------------------------------------------------------------------


class TrainingCurves:
    """The RL driver's curves: a fixed eval subset, a curve every ``tts_every`` iterations, appended to
    ``tts_curves.jsonl`` (one object per eval: iteration, seconds, points)."""

    def __init__(self, cfg: EvalConfig, data: str, processor, run_dir: Path, seed: int, verifier: str):

        self.cfg, self.processor, self.verifier = cfg, processor, verifier
        self.curve = cfg.curve(seed)
        self.problems = load_problems(cfg.data or data).problems[: cfg.max_samples]
        self.path = Path(run_dir) / "tts_curves.jsonl"
        self.history: list[CurvePoint] = []
        if self.path.exists():  # resumed run: earlier curves stay in the plot
            for line in self.path.read_text().splitlines():
                self.history += [CurvePoint(**p) for p in json.loads(line)["points"]]

    def check_fits(self, max_model_len: int) -> None:
        need = max(prompt_lengths(self.problems, self.processor)) + self.curve.max_new_tokens()
        if need > max_model_len:
            raise ValueError(
                f"eval.budgets: the longest eval prompt + largest budget + eval.answer_tokens needs {need} "
                f"tokens; rollout.max_model_len is {max_model_len}"
            )

    def due(self, it: int, iterations: int) -> bool:
        every = self.cfg.tts_every
        return bool(every) and ((it + 1) % every == 0 or it == iterations - 1)

    def run(self, it: int, generate: Generate, verify: Verify) -> dict[str, float]:
        """A curve with the current weights; returns the metrics-row keys (``tts/budget_<b>``: accuracy)."""
        result = run_curve(
            self.problems, self.processor, generate, verify, self.curve, f"iter_{it:05d}", self.verifier
        )
        self.history += result.points
        entry = {
            "iteration": it,
            "generation_s": result.generation_s,
            "points": [p.row() for p in result.points],
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        return {f"tts/budget_{p.budget}": p.accuracy for p in result.points}
