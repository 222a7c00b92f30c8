"""The RL driver (single controller): online policy mirror descent for Kimi-VL-Thinking.

Kimi k1.5 sec. 2.3.2: iteration i samples rollouts from pi_i (the current weights), then takes one
or more optimizer steps on the OPMD loss with pi_i as the KL reference; the result is pi_{i+1}.
The optimizer state is reset at each iteration (k1.5), by default. ``fit()`` is the whole order of
an iteration; each step is a short method below it.
"""

from __future__ import annotations

import logging
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import ray
from tqdm import tqdm

from actors.learner import LearnerGroup
from actors.memory import rss_mb
from actors.placement import place, start_ray
from actors.reward import RewardActor
from actors.rollout import ACTOR_FAILURES, RolloutPool, RolloutUnavailable
from actors.stream import WeightStream
from corpus.problems import DataError, Problem, load_problems
from curriculum import CurriculumSampler, accuracy_by_level
from evaluation.tts import TrainingCurves, wandb_series
from kimivl import KimiVLProcessor
from learner.experience import Experience
from learner.rank import learner_layout, learner_state_dir
from rewards import Verdict, total_rewards
from rl.config import LossConfig, RLConfig, RolloutConfig, TrainerConfig, warn_stale_reference
from rl.losses import assign_advantages, combine, get_loss
from rl.offpolicy import correct, mismatch_metrics
from rl.partial import PartialBuffer, group_key, parse_group
from rollout.engine import EngineConfig, Sample
from rollout.prompts import chat_prompt
from rollout.trajectory import REPEAT, Trajectory
from rollout.worker import RolloutRequest
from runkit import lifecycle
from runkit.config import to_dict
from runkit.lifecycle import Checkpoints, RunStopped
from runkit.plots import plot_training, read_metrics
from runkit.provenance import write_run_info
from runkit.tracking import Tracker

log = logging.getLogger(__name__)


__all__ = [
    "LossConfig",
    "RLConfig",
    "RolloutConfig",
    "Trainer",
    "TrainerConfig",
    "train",
    "warn_stale_reference",
]


@dataclass
class Batch:
    """The complete groups one rollout produced for iteration ``iteration``, sampled by policy ``version``
    (the weights the engines held: ``iteration``, or ``iteration - 1`` when sampled ahead)."""

    iteration: int
    version: int
    problems: list[Problem]  # the iteration's fresh problems
    groups: list[list[Trajectory]]  # complete groups (with partial rollouts, some began earlier)
    row: dict[str, float]  # the rollout's metrics
    seconds: float  # how long the rollout took

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "version": self.version,
            "problems": [p.id for p in self.problems],
            "groups": [[t.state_dict() for t in g] for g in self.groups],
            "row": self.row,
            "seconds": self.seconds,
        }


@dataclass
class Rollout:
    """One sampled response as the driver carries it from rollout through scoring, the sampler, the
    learner batch and the log: the iteration's samples are flattened once, here."""

    problem: Problem
    group: int  # the index of its group among the iteration's complete groups: its samples share it
    sample: Sample
    stale: int = 0  # leading response tokens an older policy than the learning one sampled
    older: int = 0  # of those, the ones from earlier rollouts (partial rollouts' older segments)
    verdict: Verdict | None = None
    reward: float = 0.0


def train(cfg: RLConfig, on_start=None) -> Trainer:
    """Run ``cfg`` through the shared lifecycle (``runkit/lifecycle.py``): checkpoints, resume, SIGTERM,
    and restarts from the last checkpoint after a lost actor, up to ``trainer.max_restarts`` times."""

    def build(resume: str | None) -> Trainer:
        return Trainer(replace(cfg, trainer=replace(cfg.trainer, resume=resume)))

    return lifecycle.run(build, cfg.trainer.resume, cfg.trainer.max_restarts, on_start)


class Trainer:
    """The RL driver. Building one reads the data, the checkpoint to resume from and the processor;
    :meth:`start` starts Ray and the actors (``lifecycle.run`` calls it, then :meth:`fit`, then
    :meth:`close`)."""

    actor_failures = (*ACTOR_FAILURES, RolloutUnavailable)

    def __init__(self, cfg: RLConfig):
        self.cfg, t = cfg, cfg.trainer
        self.run_dir = Path(t.output_dir)
        self.checkpoints = Checkpoints(self.run_dir, t.keep_checkpoints, passthrough=self.actor_failures)
        state, self.learner_state = None, None
        if t.resume:
            ckpt, state = lifecycle.resume_point(t.resume)
            self.model_path = str(ckpt)
            log.info("resuming from %s: the engines and the learners load it", ckpt)
            self.learner_state = learner_state_dir(ckpt, state.get("learner"), self.learner_layout())
        else:
            self.model_path = cfg.model
            lifecycle.check_fresh(self.run_dir)
        if not Path(self.model_path).is_dir():
            raise FileNotFoundError(
                f"model: {self.model_path} is not a directory (make one with `kvrl tiny --out DIR`)"
            )
        data = load_problems(cfg.data.path, cfg.data.skip_bad_rows, cfg.data.check_images)
        self.problems, self.rows_skipped = data.problems, sum(data.skipped.values())
        self.processor = KimiVLProcessor.from_pretrained(self.model_path)
        self._index = {p.id: i for i, p in enumerate(self.problems)}
        self.sampler = CurriculumSampler(self._difficulties(), cfg.curriculum, seed=t.seed)
        self.start_at = 0
        if state is not None:
            self.sampler.load_state_dict(state["sampler"])
            self.start_at = state["iteration"] + 1
        self.nonfinite_in_a_row = state.get("nonfinite_in_a_row", 0) if state else 0
        self.buffer = PartialBuffer(cfg.rollout.partial)
        if state is not None:
            self.buffer.load_state_dict(state.get("partial", []), self._carried_request)
        # pipelined (trainer.max_staleness): the next iteration's rollout, running or done
        self._next: Future[Batch] | None = None
        self._ready: Batch | None = None
        if state is not None and state.get("ahead"):  # sampled before the checkpoint, not learned yet
            self._ready = self._batch_from_state(state["ahead"])
        self._background = ThreadPoolExecutor(1, thread_name_prefix="kvrl-rollout")
        self.step = state.get("step", 0) if state else 0  # optimizer steps taken so far
        self._images: dict[str, dict] = {}
        self.curves = self._make_curves()
        self._eval_row: dict = {}
        self.tracker = self.pool = self.learners = self.reward = self.placement = self.stream = None

    def learner_layout(self) -> dict[str, int]:
        lc = self.cfg.learner
        return learner_layout(self.cfg.resources.learner_ranks, lc.zero_stage, lc.expert_parallel)

    def start(self) -> None:
        """Provenance and tracking, then Ray (a local cluster unless RAY_ADDRESS names one), placement,
        rollout pool, learners, rewards."""
        cfg = self.cfg
        warn_stale_reference(cfg.trainer)
        write_run_info(self.run_dir, to_dict(cfg))
        self.tracker = Tracker(
            self.run_dir, cfg.tracking, to_dict(cfg), resume_at=self.start_at if cfg.trainer.resume else None
        )
        self.cluster = start_ray(cfg.resources)
        self.placement = place(cfg.resources)
        engine = EngineConfig(
            model=self.model_path,
            dtype=cfg.rollout.dtype,
            seed=cfg.trainer.seed,
            max_model_len=cfg.rollout.max_model_len,
            max_num_seqs=cfg.rollout.max_num_seqs,
            tensor_parallel_size=cfg.rollout.tensor_parallel_size,
            enforce_eager=cfg.rollout.enforce_eager,
            gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
            speculative_tokens=cfg.rollout.speculative_tokens,
            speculative_max_batch=cfg.rollout.speculative_max_batch,
            speculative_adaptive=cfg.rollout.speculative_adaptive,
            record_routes=cfg.rollout.record_routes or cfg.trainer.routing_replay,
            router_dtype=cfg.rollout.router_dtype,
            weight_stream=cfg.rollout.weight_sync == "stream",
        )
        res = cfg.resources
        self.pool = RolloutPool(
            engine,
            res.rollout_actors,
            self.placement.rollout,
            cfg.rollout.chunk_size,
            cores=res.rollout_cores,
            version=self.start_at,  # the checkpoint's weights: the policy after start_at iterations
        )
        self.learners = LearnerGroup(
            self.model_path,
            replace(cfg.learner, routing_replay=cfg.trainer.routing_replay),
            res.learner_ranks,
            self.placement.learner,
            state_dir=self.learner_state,
            cores=res.learner_cores,
        )
        self.reward = RewardActor.options(**self.placement.reward).remote(cfg.rewards)
        if cfg.rollout.weight_sync == "stream":
            # NCCL where both sides hold GPUs (the learner's weights never cross the host), else gloo
            gpus = res.learner_gpus > 0 and res.rollout_gpus > 0
            self.stream = WeightStream(self.learners, "nccl" if gpus else "gloo", cfg.rollout.sync_timeout_s)

    def _make_curves(self) -> TrainingCurves | None:
        cfg = self.cfg
        if not cfg.eval.tts_every:
            return None
        curves = TrainingCurves(
            cfg.eval, cfg.data.path, self.processor, self.run_dir, cfg.trainer.seed, cfg.rewards.verifier_spec
        )
        curves.check_fits(cfg.rollout.max_model_len)
        return curves

    def _difficulties(self) -> list[float]:
        values = [p.difficulty for p in self.problems]
        if self.cfg.curriculum.schedule != "none" and any(v is None for v in values):
            missing = next(p for p in self.problems if p.difficulty is None)
            raise DataError(
                f"{self.cfg.data.path}, row {missing.row}: curriculum schedule "
                f"{self.cfg.curriculum.schedule!r} needs a difficulty on every row (kvrl difficulty)"
            )
        return [0.5 if v is None else v for v in values]

    # -- the iteration ---------------------------------------------------------------------------

    def fit(self) -> None:
        """The iterations. Synchronous: rollout, reward, learn, sync. With ``trainer.max_staleness: 1`` the
        next iteration's rollout starts once this one's batch is scored (the sampler updated, in order)
        and runs on the engines while the learners train; the weights sync once both are done."""
        last = self.cfg.trainer.iterations
        for it in tqdm(range(self.start_at, last), desc="RL iterations", unit="it"):
            phase, start, started_at = _Phases(it), time.perf_counter(), time.time()
            batch, self._ready = self._ready, None  # sampled ahead, during the last iteration
            ran_rollout = 0.0  # seconds the engines sampled during this iteration
            if batch is None:
                fresh = self.fresh(self.sample(it), it)
                batch, ran_rollout = phase("rollout", self.rollout, fresh, it, self.pool.version)
            else:
                phase.skip()
            rollouts = self.flatten(batch)
            _, t_reward = phase("reward", self.score, rollouts, it)
            self.update_sampler(rollouts)
            if self.cfg.trainer.max_staleness and it + 1 < last:
                ahead = self.fresh(self.sample(it + 1), it + 1)
                version = self.pool.version  # the engines' weights: policy it, not yet it + 1
                self._next = self._background.submit(self.rollout, ahead, it + 1, version)
                log.info(
                    "iteration %d: sampling iteration %d's batch ahead, with policy %d", it, it + 1, version
                )
            learn, t_learn = phase("learn", self.learn, self.experiences(rollouts))
            _, t_wait = phase("wait", self._wait_ahead)  # the learners idle until the engines are done
            if self._ready is not None:
                ran_rollout += self._ready.seconds
            _, t_sync = phase("sync", self.sync)
            phase("eval", self.evaluate, it)
            elapsed = time.perf_counter() - start  # sample to eval; checkpoints excluded
            times = dict(
                time_rollout=ran_rollout,  # rollouts run in this iteration (pipelined: the next one's)
                time_reward=t_reward,
                time_learn=t_learn,
                time_wait=t_wait,
                time_sync=t_sync,
                time_iteration=elapsed,
                idle_rollout=max(0.0, 1.0 - ran_rollout / elapsed),
                idle_learner=max(0.0, 1.0 - t_learn / elapsed),
                # wall clock at the iteration's start: the gap to the next row's is the whole iteration,
                # logging and checkpoint included (benchmarks/iteration.py times iterations by it)
                started_at=started_at,
            )
            self.log(it, batch, rollouts, learn, times)
            phase("checkpoint", self.checkpoint, it)
            phase.close()

    def _wait_ahead(self) -> None:
        """Let the rollout sampling ahead finish: new weights must not reach the engines in the middle."""
        if self._next is not None:
            future, self._next = self._next, None
            self._ready = future.result()

    def resume_hint(self) -> str:
        """Where a stopped run can continue from, for the messages that stop it."""
        return self.checkpoints.resume_hint()

    def sample(self, it: int) -> list[Problem]:
        n = min(self.cfg.trainer.prompts_per_iteration, len(self.problems))
        return [self.problems[i] for i in self.sampler.sample(n, it)]

    def fresh(self, problems: list[Problem], it: int) -> tuple[list[Problem], list[Trajectory]]:
        """The new groups of iteration ``it``: n trajectories per problem, nothing sampled yet."""
        n = self.cfg.rollout.sampling.n
        return problems, [Trajectory(self._request(p, it), j) for p in problems for j in range(n)]

    def rollout(self, fresh: tuple[list[Problem], list[Trajectory]], it: int, version: int) -> Batch:
        """Iteration ``it``'s new groups and the carried ones (partial rollouts) through the pool, on the
        engines' weights, policy ``version``; the groups complete now make the batch."""
        start, rc = time.perf_counter(), self.cfg.rollout
        problems, trajectories = fresh
        trajectories, row = self.pool.extend(
            self.buffer.schedule(trajectories, it), rc.sampling, rc.schedule, version, rc.repeat
        )
        row["rollout_tokens"] = float(sum(t.born.count(version) for t in trajectories))
        groups = self.buffer.collect(trajectories)
        row["partial_carried"] = float(self.buffer.carried())
        return Batch(it, version, problems, groups, row, time.perf_counter() - start)

    def flatten(self, batch: Batch) -> list[Rollout]:
        """The batch's samples, each group's together; a token is stale if a policy older than the one
        learning it (version ``batch.iteration``) sampled it."""
        return [
            Rollout(
                self.problems[self._index[parse_group(t.group)[0]]],
                g,
                t.to_sample(),
                t.stale_tokens(batch.iteration),
                t.stale_tokens(batch.version),
            )
            for g, members in enumerate(batch.groups)
            for t in members
        ]

    def _batch_from_state(self, state: dict) -> Batch:
        groups = [
            [Trajectory.from_state(t, self._carried_request(t["group"])) for t in members]
            for members in state["groups"]
        ]
        problems = [self._problem(pid) for pid in state["problems"]]
        return Batch(state["iteration"], state["version"], problems, groups, state["row"], state["seconds"])

    def _request(self, p: Problem, it: int) -> RolloutRequest:
        """The request of problem ``p``'s group started in iteration ``it`` (its seed fixed by both)."""
        seed = zlib.crc32(f"{self.cfg.trainer.seed}:{it}:{p.id}".encode())
        prompt = chat_prompt(self.processor, p.question, len(p.images))
        return RolloutRequest(group_key(p.id, it), prompt, p.images, seed=seed)

    def _carried_request(self, group: str) -> RolloutRequest:
        problem_id, started = parse_group(group)
        return self._request(self._problem(problem_id), started)

    def _problem(self, problem_id: str) -> Problem:
        """A problem a checkpoint names (a carried or sampled-ahead group's)."""
        if problem_id not in self._index:
            raise DataError(
                f"{self.cfg.data.path}: the checkpoint continues problem {problem_id!r}, not in the data"
            )
        return self.problems[self._index[problem_id]]

    def score(self, rollouts: list[Rollout], it: int) -> None:
        """Verdicts from the reward actor, then rewards (correctness and length, over whole groups)."""
        rc = self.cfg.rewards
        tasks = [
            rc.task(
                r.sample.text, r.problem.answer, r.problem.verifier, r.problem.question, r.problem.columns
            )
            for r in rollouts
        ]
        verdicts = ray.get(self.reward.verify.remote(tasks))
        rewards = total_rewards(
            [v.correct for v in verdicts],
            [len(r.sample.response_token_ids) for r in rollouts],
            [r.group for r in rollouts],
            it,
            rc.length,
            scores=[v.score for v in verdicts],
        )
        penalty = self.cfg.rollout.repeat.penalty
        for r, v, reward in zip(rollouts, verdicts, rewards, strict=True):
            r.verdict, r.reward = v, reward - (penalty if r.sample.finish_reason == REPEAT else 0.0)

    def update_sampler(self, rollouts: list[Rollout]) -> None:
        self.sampler.update(
            [self._index[r.problem.id] for r in rollouts], [float(r.verdict.correct) for r in rollouts]
        )

    def experiences(self, rollouts: list[Rollout]) -> list[Experience]:
        mask = self.cfg.rollout.partial.old_segments == "mask"
        return [
            Experience(
                r.sample.prompt_token_ids,
                r.sample.response_token_ids,
                r.reward,
                r.group,
                r.sample.logprobs,
                forced=list(r.sample.forced),
                stale=r.stale,
                loss_from=r.older if mask else 0,
                routes=r.sample.routes,
                **self._pixel_inputs(r.problem),
            )
            for r in rollouts
        ]

    def learn(self, batch: list[Experience]) -> dict[str, float]:
        """Old log-probs (learner or rollout), advantages over whole groups, then the optimizer steps."""
        cfg, metrics = self.cfg, {}
        flat = [e.reward for e in batch]
        rewards_by_group: dict[int, set[float]] = {}
        for e in batch:
            rewards_by_group.setdefault(e.group_id, set()).add(e.reward)
        zero_signal = {g for g, rs in rewards_by_group.items() if len(rs) == 1}
        metrics["zero_signal_groups"] = len(zero_signal)
        if cfg.trainer.drop_zero_signal_groups:
            batch = [e for e in batch if e.group_id not in zero_signal]
        if not batch:
            return {**metrics, "skipped": 1.0, "reward_spread": 0.0}
        t = cfg.trainer
        if t.old_logprobs == "learner":
            # the learners score every token under the policy about to train: the monitor sees stale
            # tokens too, and they become the reference unless stale_reference=sampling keeps an older
            # policy's own log-probs (the rollout's) for the tokens it sampled
            rollout_lps = [list(e.old_logprobs) for e in batch]
            learner_lps = self.learners.logprobs(batch, replay=t.routing_replay)
            metrics.update(mismatch_metrics(batch, rollout_lps, learner_lps))
            if any(e.routes is not None for e in batch):
                metrics.update(self._routing_metrics(batch, rollout_lps))
            for e, lp in zip(batch, learner_lps, strict=True):
                keep = e.stale if t.stale_reference == "sampling" else 0
                e.old_logprobs = e.old_logprobs[:keep] + lp[keep:]
            metrics.update(
                correct(batch, rollout_lps, t.off_policy_correction, t.correction_cap, t.correction_band)
            )
        loss = get_loss(cfg.loss.name)
        assign_advantages(batch, loss, cfg.loss.kwargs())
        if t.reset_optimizer:
            self.learners.reset_optimizer()
        steps = optimizer_steps(batch, t.optimizer_steps_per_iteration, t.epochs_per_iteration)
        results = [
            self.learners.train_step(part, loss.bound(cfg.loss.kwargs()), self.lr(k))
            for k, part in enumerate(steps)
        ]
        metrics["lr"] = self.lr(len(steps) - 1)
        skipped = sum(float(r["skipped"]) for r in results)
        self.step += len(results) - int(skipped)
        self.nonfinite_in_a_row = self.nonfinite_in_a_row + 1 if skipped else 0
        if self.nonfinite_in_a_row >= cfg.trainer.max_nonfinite_in_a_row:
            raise RunStopped(
                f"{self.nonfinite_in_a_row} optimizer steps in a row had a NaN/inf loss; "
                "lower the learning rate or check the rewards"
            )
        done = combine([r for r in results if not float(r["skipped"])])
        metrics.update({name: float(value) for name, value in done.items() if name != "skipped"})
        metrics["skipped"] = float(skipped == len(results))
        metrics["nonfinite_steps"] = skipped
        metrics["reward_spread"] = max(flat) - min(flat)
        return metrics

    def _routing_metrics(self, batch: list[Experience], rollout_lps: list[list[float]]) -> dict[str, float]:
        """Per MoE layer, how often the learner's own routing differs from the rollout's (read from the
        log-prob pass just made); and the mismatch with routing replay off and on, from one more pass
        with the other setting: how much of the gap routing explains."""
        metrics = {
            f"routing_disagreement/layer_{layer}": share
            for layer, share in enumerate(self.learners.routing_disagreement())
        }
        replay = self.cfg.trainer.routing_replay
        other = self.learners.logprobs(batch, replay=not replay)
        kl = mismatch_metrics(batch, rollout_lps, other)["mismatch_kl"]
        metrics["mismatch_kl_replay_off" if replay else "mismatch_kl_replay_on"] = kl
        return metrics

    def lr(self, k: int) -> float:
        """The learning rate of this iteration's k-th optimizer step: linear warm-up, then constant."""
        lr, warmup = self.cfg.learner.lr, self.cfg.learner.warmup_steps
        return lr * min(1.0, (self.step + k + 1) / warmup) if warmup else lr

    def sync(self) -> None:
        if self.stream is not None:
            self.pool.stream_weights(self.stream)
        else:
            self.pool.update_weights(self.learners.state_ref())

    def evaluate(self, it: int) -> None:
        """Every ``eval.tts_every`` iterations, a test-time scaling curve of the weights just synced, on
        the rollout pool; its ``tts/budget_<b>`` accuracies go into this iteration's metrics row."""
        self._eval_row = {}
        if self.curves is None or not self.curves.due(it, self.cfg.trainer.iterations):
            return
        start = time.perf_counter()
        row = self.curves.run(it, self.pool.generate, lambda tasks: ray.get(self.reward.verify.remote(tasks)))
        # eval_policy: the policy the curve measures, the engines' weights (it + 1: this iteration's)
        self._eval_row = {
            **row,
            "time_eval": time.perf_counter() - start,
            "eval_policy": float(self.pool.version),
        }
        series = wandb_series(self.curves.history)  # every curve so far: the evolution in one plot
        title = f"test-time scaling ({self.cfg.eval.mode}) over training"
        self.tracker.log_line_plot("tts/curves", series, title=title, xname="log2 thinking budget", step=it)

    def log(self, it: int, batch: Batch, rollouts: list[Rollout], learn: dict, times: dict) -> None:
        lengths = [len(r.sample.response_token_ids) for r in rollouts]
        n = max(len(rollouts), 1)  # with partial rollouts, an iteration may complete no group
        nan = float("nan")
        row = {
            "iteration": it,
            "step": self.step,
            "reward_mean": sum(r.reward for r in rollouts) / n if rollouts else nan,
            "accuracy": sum(r.verdict.correct for r in rollouts) / n if rollouts else nan,
            "response_len_mean": sum(lengths) / n if rollouts else nan,
            "truncation_rate": sum(r.sample.finish_reason == "length" for r in rollouts) / n,
            "repeat_stopped": sum(r.sample.finish_reason == REPEAT for r in rollouts),
            "partial_stale_fraction": sum(r.older for r in rollouts) / max(sum(lengths), 1),
            "staleness": float(it - batch.version),  # policy versions between sampling and learning
            **batch.row,
            "kl": learn.get("kl", float("nan")),
            "entropy": learn.get("entropy", float("nan")),
            **times,
            # of this batch's rollout: tokens it sampled / its time; finished responses' tokens / its time
            "rollout_tokens_per_s": batch.row["rollout_tokens"] / max(batch.seconds, 1e-9),
            "finished_tokens_per_s": sum(lengths) / max(batch.seconds, 1e-9),
            "sync_time": times["time_sync"],
            "scored_zero_with_error": sum(
                not r.verdict.correct and r.verdict.error is not None for r in rollouts
            ),
            "data_rows_skipped": self.rows_skipped,
            **accuracy_by_level([(r.problem.difficulty, r.verdict.correct) for r in rollouts]),
            **{k: v for k, v in learn.items() if k not in ("kl", "entropy")},
            **self.sampler.metrics([self._index[p.id] for p in batch.problems], it),
            **self._eval_row,
            **self.memory(),
        }
        self.tracker.log(row)
        table = [
            {
                "problem": r.problem.id,
                "response": r.sample.text[:2000],
                "answer": r.problem.answer,
                "correct": r.verdict.correct,
                "reward": r.reward,
            }
            for r in rollouts
        ]
        self.tracker.log_samples(it, table)
        log.info(
            "iteration %d: reward %.3f accuracy %.3f len %.1f kl %.4g",
            it,
            row["reward_mean"],
            row["accuracy"],
            row["response_len_mean"],
            row["kl"],
        )

    def memory(self) -> dict[str, float]:
        """Host RSS in MiB of the driver and of every actor (a leak shows as a line that keeps rising)."""
        row = {"rss_mb/driver": rss_mb(children=False)}  # its children are Ray's own daemons
        row.update({f"rss_mb/rollout_{i}": v for i, v in enumerate(self.pool.rss_mb())})
        row.update({f"rss_mb/learner_{i}": v for i, v in enumerate(self.learners.rss_mb())})
        row["rss_mb/reward"] = ray.get(self.reward.rss_mb.remote())
        return row

    def checkpoint(self, it: int) -> None:
        """HF weights, DeepSpeed's full training state and trainer_state.json, whole or not at all."""
        last = it == self.cfg.trainer.iterations - 1
        if (it + 1) % self.cfg.trainer.save_every and not last:
            return

        def fill(folder: Path) -> None:
            self.learners.export_hf(str(folder))
            self.learners.save_state(str(folder))  # optimizer + fp32 master weights: exact resume

        state = {
            "iteration": it,
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "seed": self.cfg.trainer.seed,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "learner": self.learner_layout(),
            "partial": self.buffer.state_dict(),  # trajectories that continue in the next iteration
            # pipelined: the next iteration's batch, sampled already; a resumed run learns it first
            "ahead": self._ready.state_dict() if self._ready is not None else None,
        }
        self.checkpoints.write(f"iter_{it:05d}", fill, state)

    def close(self) -> None:
        """Flush tracking, plot, and shut every actor down; safe after a partial :meth:`start`."""
        if self.tracker is not None:
            self.tracker.finish()
            self.plot()
        closers = (
            self.pool and self.pool.shutdown,
            self.learners and self.learners.shutdown,
            self.reward and (lambda: ray.kill(self.reward)),
            self.placement and self.placement.remove,
        )
        for closer in filter(None, closers):
            try:
                closer()
            except Exception as e:  # keep closing the rest
                log.warning("shutdown: %s", e)
        # a rollout sampling ahead ends once its engines are gone (a stopped pool starts no replacement)
        self._background.shutdown(wait=True, cancel_futures=True)
        self._next = None
        self.tracker = self.pool = self.learners = self.reward = self.placement = self.stream = None

    def plot(self) -> None:
        """``training.png``: reward, accuracy and length over the iterations so far."""
        try:
            if self.tracker.metrics_path.exists():
                plot_training(read_metrics(self.tracker.metrics_path), self.run_dir / "training.png")
        except Exception as e:  # a plot is never worth a failed run
            log.warning("training.png: %s", e)

    # -- helpers ---------------------------------------------------------------------------------

    def _pixel_inputs(self, p: Problem) -> dict:
        if not p.images:
            return {}
        if p.id not in self._images:
            enc = self.processor.image_processor(p.images)
            self._images[p.id] = {
                "pixel_values": enc["pixel_values"],
                "image_grid_hws": enc["image_grid_hws"],
            }
        return self._images[p.id]


class _Phases:
    """A progress bar over one iteration's phases; calling it runs a phase and returns (result, seconds)."""

    NAMES = ("rollout", "reward", "learn", "wait", "sync", "eval", "checkpoint")

    def __init__(self, iteration: int):
        self.bar = tqdm(total=len(self.NAMES), desc=f"iteration {iteration}", leave=False, unit="phase")

    def __call__(self, name: str, fn, *args):
        self.bar.set_postfix_str(name)
        start = time.perf_counter()
        out = fn(*args)
        self.bar.update()
        return out, time.perf_counter() - start

    def skip(self) -> None:
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def optimizer_steps(batch: list[Experience], steps_per_pass: int, passes: int) -> list[list[Experience]]:
    """The iteration's optimizer steps: ``passes`` passes over the batch, each cut into ``steps_per_pass``
    steps along group boundaries (a group never spans two steps of a pass)."""
    return [part for _ in range(passes) for part in _split_groups(batch, steps_per_pass)]


def _split_groups(batch: list[Experience], parts: int) -> list[list[Experience]]:
    """Split into ``parts`` optimizer steps along group boundaries (a group never spans two steps)."""
    group_ids = list(dict.fromkeys(e.group_id for e in batch))
    parts = min(parts, len(group_ids))
    chunks = [set(group_ids[i::parts]) for i in range(parts)]
    return [[e for e in batch if e.group_id in c] for c in chunks]
