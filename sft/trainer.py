"""The SFT driver: long chain-of-thought supervised fine-tuning before RL (Kimi-VL sec. 2.4, k1.5 sec. 2.3.1).

Same learner group as RL (DeepSpeed ranks as Ray actors); only the loss differs: token NLL on
assistant tokens (``sft/loss.py``), over examples packed into rows (``sft/packing.py``). The rows are
packed once; each epoch visits them in a fresh seeded order. The learning rate follows
``schedule`` (``sft/schedule.py``), one value per optimizer step.

Writes, under ``trainer.output_dir``: ``metrics.jsonl`` (one row per step; ``eval_loss`` on the
held-out split at step 0, every ``eval_every`` steps and at the end; ``test_loss`` beside it on
``data.test_path`` when given), ``run_info.json``, a wandb run,
the HF checkpoint ``final/`` that ``kvrl rl`` and vLLM load, and every ``save_every`` steps a checkpoint
``checkpoints/step_NNNNNN`` with the full training state, which ``trainer.resume`` continues from exactly
(the run lifecycle, ``runkit/lifecycle.py``, is the one RL uses).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from actors.learner import LearnerGroup
from actors.placement import ResourceConfig, place, start_ray
from actors.rollout import ACTOR_FAILURES
from kimivl import KimiVLProcessor
from learner.rank import QK_CLIP_METRICS, LearnerConfig, learner_layout, learner_state_dir
from runkit import lifecycle
from runkit.config import to_dict
from runkit.lifecycle import Checkpoints
from runkit.provenance import write_run_info
from runkit.tracking import Tracker, TrackingConfig
from sft.data import Conversation, load_conversations
from sft.format import SFTExample, encode_all
from sft.loss import sft_loss
from sft.packing import pack
from sft.schedule import LRPhase, lr_at, phase_steps

log = logging.getLogger(__name__)


@dataclass
class SFTDataConfig:
    path: str = ""
    eval_path: str | None = None  # held-out conversations; default: eval_fraction of ``path``
    eval_fraction: float = 0.1
    # A second held-out set, scored as ``test_loss`` whenever ``eval_loss`` is: when eval_loss picks a
    # setting (an lr, a step), the figure to report is the one on data the choice never saw.
    test_path: str | None = None
    skip_bad_rows: bool = False  # skip and count bad rows (and over-long ones) instead of stopping
    check_images: bool = True
    max_length: int = 4096  # tokens per conversation
    pack_length: int = 4096  # tokens per packed row

    def __post_init__(self):
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.pack_length < self.max_length:
            raise ValueError(f"pack_length ({self.pack_length}) must be >= max_length ({self.max_length})")


@dataclass
class SFTTrainerConfig:
    output_dir: str = "runs/sft"
    seed: int = 0
    batch_size: int = 8  # packed rows per optimizer step, over all ranks
    max_steps: int = 0  # stop early after this many steps (0: run the whole schedule)
    eval_every: int = 10  # steps; 0: at the start and the end only
    # Steps between checkpoints (HF weights + DeepSpeed's full state, for exact resume); 0: none but final/.
    save_every: int = 0
    keep_checkpoints: int = 2
    resume: str | None = None  # a checkpoint directory, or a run directory (its latest checkpoint)
    max_restarts: int = 0  # times a run whose actor died starts again from its last checkpoint by itself

    def __post_init__(self):
        counts = (self.max_steps, self.eval_every, self.save_every, self.max_restarts)
        if self.batch_size < 1 or self.keep_checkpoints < 1 or min(counts) < 0:
            raise ValueError(
                "batch_size and keep_checkpoints must be >= 1; max_steps, eval_every, save_every, "
                "max_restarts >= 0"
            )


@dataclass
class SFTResources:
    learner_ranks: int = 2
    learner_cpus: float = 1.0
    learner_gpus: float = 0.0
    placement_timeout_s: float = 60.0

    def placement(self) -> ResourceConfig:
        return ResourceConfig(
            rollout_actors=0,
            learner_ranks=self.learner_ranks,
            learner_cpus=self.learner_cpus,
            learner_gpus=self.learner_gpus,
            reward_cpus=0.0,
            placement_timeout_s=self.placement_timeout_s,
        )


@dataclass
class SFTConfig:
    model: str = ""
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    trainer: SFTTrainerConfig = field(default_factory=SFTTrainerConfig)
    schedule: list[LRPhase] = field(default_factory=lambda: [LRPhase()])
    learner: LearnerConfig = field(default_factory=LearnerConfig)  # learner.lr: replaced by schedule
    resources: SFTResources = field(default_factory=SFTResources)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        if not self.schedule:
            raise ValueError("schedule needs at least one phase")


def train(cfg: SFTConfig, on_start=None) -> SFTTrainer:
    """Run ``cfg`` through the shared lifecycle (``runkit/lifecycle.py``): checkpoints every
    ``trainer.save_every`` steps, exact resume, SIGTERM, and restarts from the last checkpoint after a
    lost actor, up to ``trainer.max_restarts`` times."""

    def build(resume: str | None) -> SFTTrainer:
        return SFTTrainer(replace(cfg, trainer=replace(cfg.trainer, resume=resume)))

    return lifecycle.run(build, cfg.trainer.resume, cfg.trainer.max_restarts, on_start)


class SFTTrainer:
    """The SFT driver. Building one tokenizes and packs the data and reads the checkpoint to resume
    from; :meth:`start` starts Ray and the learner group."""

    actor_failures = ACTOR_FAILURES

    def __init__(self, cfg: SFTConfig):
        self.cfg, t = cfg, cfg.trainer
        self.run_dir = Path(t.output_dir)
        self.checkpoints = Checkpoints(self.run_dir, t.keep_checkpoints, passthrough=ACTOR_FAILURES)
        self.weights, self.learner_state, self.start_step = cfg.model, None, 0
        if t.resume:
            ckpt, state = lifecycle.resume_point(t.resume)
            self.weights, self.start_step = str(ckpt), state["step"]
            self.learner_state = learner_state_dir(ckpt, state.get("learner"), self.learner_layout())
        else:
            lifecycle.check_fresh(self.run_dir)
        if not Path(cfg.model).is_dir():
            raise FileNotFoundError(f"model: {cfg.model} is not a directory (make one with `kvrl tiny`)")
        self.processor = KimiVLProcessor.from_pretrained(cfg.model)
        train, held = self._split()
        self.train = encode_all(
            self.processor, train, cfg.data.max_length, cfg.data.skip_bad_rows, cfg.data.path
        )
        self.held_out = (
            encode_all(self.processor, held, cfg.data.max_length, cfg.data.skip_bad_rows, "held-out")
            if held
            else []
        )
        lengths = [len(e) for e in self.train]
        self.rows = [[self.train[i] for i in b] for b in pack(lengths, cfg.data.pack_length)]
        self.eval_rows = self._packed(self.held_out)
        self.test_rows = self._packed(self._test_set())
        self.steps_per_epoch = math.ceil(len(self.rows) / t.batch_size)
        self.total_steps = sum(phase_steps(cfg.schedule, self.steps_per_epoch))
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps)
        log.info(
            "SFT: %d train / %d held-out conversations, %d packed rows (%.0f%% full), %d steps",
            len(self.train),
            len(self.held_out),
            len(self.rows),
            100 * sum(lengths) / (len(self.rows) * cfg.data.pack_length),
            self.total_steps,
        )
        self.tracker = self.learners = self.placement = self.final = None

    def learner_layout(self) -> dict[str, int]:
        lc = self.cfg.learner
        return learner_layout(self.cfg.resources.learner_ranks, lc.zero_stage, lc.expert_parallel)

    def start(self) -> None:
        cfg = self.cfg
        write_run_info(self.run_dir, to_dict(cfg))
        resumed = self.start_step + 1 if self.cfg.trainer.resume else None  # rows are numbered by step + 1
        self.tracker = Tracker(self.run_dir, cfg.tracking, to_dict(cfg), resume_at=resumed)
        resources = cfg.resources.placement()
        log.info("starting Ray and %d learner ranks", resources.learner_ranks)
        self.cluster = start_ray(resources)
        self.placement = place(resources)
        self.learners = LearnerGroup(
            self.weights,
            cfg.learner,
            resources.learner_ranks,
            self.placement.learner,
            state_dir=self.learner_state,
            cores=resources.learner_cores,
        )

    def _packed(self, examples: list[SFTExample]) -> list[list[SFTExample]]:
        return [[examples[i] for i in b] for b in pack([len(e) for e in examples], self.cfg.data.pack_length)]

    def _test_set(self) -> list[SFTExample]:
        d = self.cfg.data
        if not d.test_path:
            return []
        convs = load_conversations(d.test_path, d.skip_bad_rows, d.check_images).conversations
        return encode_all(self.processor, convs, d.max_length, d.skip_bad_rows, d.test_path)

    def _split(self) -> tuple[list[Conversation], list[Conversation]]:
        d = self.cfg.data
        convs = load_conversations(d.path, d.skip_bad_rows, d.check_images).conversations
        if d.eval_path:
            return convs, load_conversations(d.eval_path, d.skip_bad_rows, d.check_images).conversations
        order = list(range(len(convs)))
        random.Random(self.cfg.trainer.seed).shuffle(order)
        n_eval = min(int(len(convs) * d.eval_fraction), len(convs) - 1)
        held = sorted(order[:n_eval])
        keep = sorted(order[n_eval:])
        return [convs[i] for i in keep], [convs[i] for i in held]

    # -- the loop --------------------------------------------------------------------------------

    def fit(self) -> Path:
        """Train through the schedule from ``start_step``; returns the final HF checkpoint directory."""
        t = self.cfg.trainer
        if self.start_step == 0:
            self.tracker.log({"iteration": 0, **self.evaluate()})
        bar = tqdm(
            range(self.start_step, self.total_steps),
            desc="SFT steps",
            unit="step",
            initial=self.start_step,
            total=self.total_steps,
        )
        for step in bar:
            row = self.train_step(step)
            done = step + 1
            if (t.eval_every and done % t.eval_every == 0) or done == self.total_steps:
                row.update(self.evaluate())
            self.tracker.log(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
            if t.save_every and done % t.save_every == 0:
                self.checkpoint(done)
        self.final = Path(self.learners.export_hf(str(self.run_dir / "final")))
        log.info("SFT done: checkpoint %s", self.final)
        return self.final

    def checkpoint(self, done: int) -> None:
        """HF weights, DeepSpeed's full training state and trainer_state.json after ``done`` steps."""

        def fill(folder: Path) -> None:
            self.learners.export_hf(str(folder))
            self.learners.save_state(str(folder))

        state = {"step": done, "seed": self.cfg.trainer.seed, "learner": self.learner_layout()}
        self.checkpoints.write(f"step_{done:06d}", fill, state)

    def resume_hint(self) -> str:
        return self.checkpoints.resume_hint()

    def batch(self, step: int) -> list[list[SFTExample]]:
        """The packed rows of optimizer step ``step``: a slice of its epoch's seeded order."""
        epoch, i = divmod(step, self.steps_per_epoch)
        order = list(range(len(self.rows)))
        random.Random(f"{self.cfg.trainer.seed}:{epoch}").shuffle(order)
        size = self.cfg.trainer.batch_size
        return [self.rows[j] for j in order[i * size : (i + 1) * size]]

    def train_step(self, step: int) -> dict:
        lr = lr_at(step, self.cfg.schedule, self.steps_per_epoch)
        start = time.perf_counter()
        m = self.learners.sft_step(self.batch(step), lr, sft_loss)
        seconds = time.perf_counter() - start
        return {
            "iteration": step + 1,
            "epoch": step / self.steps_per_epoch,
            "lr": lr,
            "loss": m["nll_sum"] / max(m["tokens"], 1.0),
            "target_tokens": m["tokens"],
            "grad_norm": m["grad_norm"],
            "skipped": m["skipped"],
            "time_step": seconds,
            "target_tokens_per_s": m["tokens"] / max(seconds, 1e-9),
            **{k: m[k] for k in QK_CLIP_METRICS if k in m},
        }

    def evaluate(self) -> dict:
        """Token-mean NLL of the held-out split (``eval_loss``) and of the test set (``test_loss``), each
        where there is one."""
        out = {}
        for name, rows in (("eval_loss", self.eval_rows), ("test_loss", self.test_rows)):
            if rows:
                m = self.learners.sft_eval(rows, sft_loss)
                out[name] = m["nll_sum"] / max(m["tokens"], 1.0)
        return out

    def close(self) -> None:
        """Flush tracking and shut the learners down; safe after a partial :meth:`start`."""
        if self.tracker is not None:
            self.tracker.finish()
        for closer in filter(
            None, (self.learners and self.learners.shutdown, self.placement and self.placement.remove)
        ):
            try:
                closer()
            except Exception as e:  # keep closing the rest
                log.warning("shutdown: %s", e)
        self.tracker = self.learners = self.placement = None
