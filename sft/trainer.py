"""The SFT driver: long chain-of-thought supervised fine-tuning before RL (Kimi-VL sec. 2.4, k1.5 sec. 2.3.1).

Same learner group as RL (DeepSpeed ranks as Ray actors); only the loss differs: token NLL on
assistant tokens (``sft/loss.py``), over examples packed into rows (``sft/packing.py``). The rows are
packed once; each epoch visits them in a fresh seeded order. The learning rate follows
``schedule`` (``sft/schedule.py``), one value per optimizer step.

Writes, under ``trainer.output_dir``: ``metrics.jsonl`` (one row per step; ``eval_loss`` on the
held-out split at step 0, every ``eval_every`` steps and at the end), ``run_info.json``, a wandb run,
and the HF checkpoint ``final/`` that ``kvrl rl`` and vLLM load.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from actors.placement import ResourceConfig
from learner.rank import LearnerConfig
from runkit.config import to_dict
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
    save_every: int = 0  # steps; 0: the final checkpoint only

    def __post_init__(self):
        if self.batch_size < 1 or self.max_steps < 0 or self.eval_every < 0 or self.save_every < 0:
            raise ValueError("batch_size must be >= 1; max_steps, eval_every, save_every >= 0")


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


class SFTTrainer:
    def __init__(self, cfg: SFTConfig):
        from kimivl import KimiVLProcessor

        self.cfg, t = cfg, cfg.trainer
        self.run_dir = Path(t.output_dir)
        if (self.run_dir / "metrics.jsonl").exists():
            raise FileExistsError(
                f"trainer.output_dir: {self.run_dir} already holds a run; choose another trainer.output_dir"
            )
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
        self.eval_rows = [
            [self.held_out[i] for i in b] for b in pack([len(e) for e in self.held_out], cfg.data.pack_length)
        ]
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
        write_run_info(self.run_dir, to_dict(cfg))
        self.tracker = Tracker(self.run_dir, cfg.tracking, to_dict(cfg))
        self._start_actors()

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

    def _start_actors(self) -> None:
        from actors.learner import LearnerGroup
        from actors.placement import place, start_ray

        resources = self.cfg.resources.placement()
        start_ray(resources)
        self.placement = place(resources)
        self.learners = LearnerGroup(
            self.cfg.model, self.cfg.learner, resources.learner_ranks, self.placement.learner
        )

    # -- the loop --------------------------------------------------------------------------------

    def fit(self) -> Path:
        """Train through the schedule; returns the final HF checkpoint directory."""
        t = self.cfg.trainer
        try:
            self.tracker.log({"iteration": 0, **self.evaluate()})
            bar = tqdm(range(self.total_steps), desc="SFT steps", unit="step")
            for step in bar:
                row = self.train_step(step)
                done = step + 1
                if (t.eval_every and done % t.eval_every == 0) or done == self.total_steps:
                    row.update(self.evaluate())
                self.tracker.log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                if t.save_every and done % t.save_every == 0 and done < self.total_steps:
                    self.learners.export_hf(str(self.run_dir / "checkpoints" / f"step_{done:06d}"))
            final = self.learners.export_hf(str(self.run_dir / "final"))
            log.info("SFT done: checkpoint %s", final)
            return Path(final)
        finally:
            self.close()

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
        }

    def evaluate(self) -> dict:
        """Token-mean NLL of the held-out split (empty dict without one)."""
        if not self.eval_rows:
            return {}
        m = self.learners.sft_eval(self.eval_rows, sft_loss)
        return {"eval_loss": m["nll_sum"] / max(m["tokens"], 1.0)}

    def close(self) -> None:
        self.tracker.finish()
        for closer in (self.learners.shutdown, self.placement.remove):
            try:
                closer()
            except Exception as e:  # keep closing the rest
                log.warning("shutdown: %s", e)
