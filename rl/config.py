"""The RL stage's config: the trainer's keys, the loss's, the rollout's, and ``RLConfig`` that nests them
with the learner's, the rewards', the curriculum's, the resources' and the rest (README: Configuration).
Validated when built; ``runkit.config.load_config`` builds it from YAML and overrides."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from actors.placement import ResourceConfig
from actors.plan import PlanConfig
from corpus.problems import DataConfig
from curriculum import CurriculumConfig
from evaluation.tts import EvalConfig
from learner.rank import LearnerConfig
from rewards import RewardConfig
from rl.losses import get_loss
from rl.partial import PartialConfig
from rollout.schedule import ScheduleConfig
from rollout.trajectory import RepeatConfig
from rollout.worker import SamplingConfig
from runkit.tracking import TrackingConfig

log = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    iterations: int = 3
    output_dir: str = "runs/rl"
    resume: str | None = None  # a checkpoint directory, or a run directory (its latest checkpoint)
    seed: int = 0
    prompts_per_iteration: int = 8
    optimizer_steps_per_iteration: int = 1  # per pass over the iteration's samples
    # Passes over each iteration's samples, each cut into optimizer_steps_per_iteration steps. k1.5's tau
    # term pulls towards pi_i only once theta has moved on the same samples: from the second pass on
    # (with one pass, only through the drift that earlier steps caused on other groups).
    epochs_per_iteration: int = 1
    reset_optimizer: bool = True  # k1.5: fresh optimizer state at every mirror-descent iteration
    old_logprobs: Literal["learner", "rollout"] = "learner"
    # The reference of tokens an older policy sampled (a batch sampled ahead, a partial rollout's earlier
    # segments). learning: the policy about to learn the batch, recomputed by the learners before its
    # first step, so the mirror-descent step starts from its own reference as in the synchronous loop;
    # the sampling policy enters through off_policy_correction (docs/rl.md). sampling: that policy's own
    # log-probs, from the rollout (k1.5's eq. 3 as written; about 11 points lost pipelined on the demo).
    stale_reference: Literal["sampling", "learning"] = "learning"
    # Correct for the gap between the policy that sampled a token and the reference (rl/offpolicy.py,
    # docs/rl.md "Off-policy correction"): none; tis (token weights min(rho, correction_cap) on the
    # policy-gradient term); icepop (tokens whose rho is outside correction_band leave the loss); mis
    # (responses whose geometric-mean rho is outside correction_band leave it). Needs old_logprobs=learner.
    off_policy_correction: Literal["none", "tis", "icepop", "mis"] = "none"
    # Rollout routing replay (R3): the engines record which experts each token went to and the learners'
    # MoE layers route the same tokens to the same experts, with gate weights from their own routers
    # (learner/routing.py, README). Implies rollout.record_routes.
    routing_replay: bool = False
    correction_cap: float = 2.0
    correction_band: tuple[float, float] = (0.5, 2.0)
    # Leave out groups whose rewards are all equal (no policy gradient): a departure from eq. 3 (docs/rl.md).
    drop_zero_signal_groups: bool = False
    save_every: int = 1
    keep_checkpoints: int = 2
    max_nonfinite_in_a_row: int = 5
    max_restarts: int = 0  # times a run whose actor died starts again from its last checkpoint by itself
    # Pipelined RL: with 1 the engines sample iteration i+1's batch while the learners train on iteration
    # i's, so every batch is learned by a policy one version newer than the one that sampled it (docs/rl.md).
    # 0: the synchronous loop.
    max_staleness: int = 0

    def __post_init__(self):
        if self.max_staleness not in (0, 1):
            raise ValueError(
                f"trainer.max_staleness must be 0 (synchronous) or 1 (one batch sampled ahead), "
                f"got {self.max_staleness}"
            )
        if self.max_staleness and self.stale_reference == "learning" and self.old_logprobs != "learner":
            raise ValueError(
                "trainer.stale_reference=learning needs trainer.old_logprobs=learner (the learners "
                "recompute the reference); pipelined with old_logprobs=rollout, set "
                "trainer.stale_reference=sampling"
            )
        if self.routing_replay and self.old_logprobs != "learner":
            raise ValueError(
                "trainer.routing_replay needs trainer.old_logprobs=learner (the reference is recomputed "
                "with the replayed routing)"
            )
        if self.off_policy_correction != "none" and self.old_logprobs != "learner":
            raise ValueError(
                f"trainer.off_policy_correction={self.off_policy_correction} needs "
                "trainer.old_logprobs=learner (rho is the learner's reference over the rollout's log-prob)"
            )
        lo, hi = self.correction_band
        if not (self.correction_cap >= 1.0 and 0.0 < lo < 1.0 < hi):
            raise ValueError(
                "trainer.correction_cap must be >= 1 and trainer.correction_band [lo, hi] have "
                f"0 < lo < 1 < hi, got {self.correction_cap} and {list(self.correction_band)}"
            )
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        counts = {
            "iterations": self.iterations,
            "prompts_per_iteration": self.prompts_per_iteration,
            "optimizer_steps_per_iteration": self.optimizer_steps_per_iteration,
            "epochs_per_iteration": self.epochs_per_iteration,
        }
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {value}")


def warn_stale_reference(t: TrainerConfig) -> None:
    """Pipelining with k1.5's reference as written learns much less per iteration (docs/rl.md): say so."""
    if t.max_staleness and t.stale_reference == "sampling":
        log.warning(
            "trainer.max_staleness=%d with trainer.stale_reference=sampling: each step is centred on the "
            "policy that sampled its batch, one version back; on the demo this ended 9.2 points below the "
            "synchronous loop after 20 iterations (two seeds), the default trainer.stale_reference=learning "
            "0.1 above it (docs/rl.md)",
            t.max_staleness,
        )


@dataclass
class LossConfig:
    name: str = "opmd"
    tau: float = 1.0
    exact_baseline: bool = False
    token_normalized: bool = False
    clip_eps: float = 0.2

    def kwargs(self) -> dict[str, Any]:
        if self.name == "opmd":
            return {
                "tau": self.tau,
                "exact_baseline": self.exact_baseline,
                "token_normalized": self.token_normalized,
            }
        return {"clip_eps": self.clip_eps} if self.name == "grpo" else {}


@dataclass
class RolloutConfig:
    max_model_len: int = 2048
    max_num_seqs: int = 64
    chunk_size: int = 4
    tensor_parallel_size: int = 1  # GPUs per vLLM engine (resources.rollout_gpus must match)
    # vLLM without CUDA graphs. Unset: eager on CPU and where routes are recorded (record_routes,
    # trainer.routing_replay: the capture's Python callbacks do not run in a graph), CUDA graphs on GPU
    # otherwise (faster decoding, some memory for the graphs)
    enforce_eager: bool | None = None
    gpu_memory_utilization: float = 0.85  # of each engine GPU, for weights + KV cache (GPU only)
    # the engines' weights and activations: auto is float32 on CPU, bfloat16 on GPU. bfloat16 on this
    # CPU (avx512_bf16) against the fp32 learner is a real train/inference mismatch (the monitor's testbed)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # record each token's experts in every MoE layer (rollout/routing.py): the learners then log how
    # often their own routing differs (routing_disagreement/layer_<i>); trainer.routing_replay uses them
    record_routes: bool = False
    # the engines' MoE router output dtype (vLLM's moe_router_dtype): float32, as the learner's router
    # always computes, or auto (the engine's dtype)
    router_dtype: Literal["float32", "auto"] = "float32"
    # how new weights reach the engines: stream (learner rank 0 broadcasts them module by module over a
    # group of its own, gloo on CPU and NCCL where learners and engines have GPUs: actors/stream.py) or
    # object_store (every rank gathers the whole model, rank 0 puts one host copy in Ray's object store
    # and each engine fetches it: the path before streaming, kept for comparison, kvrl bench sync)
    weight_sync: Literal["stream", "object_store"] = "stream"
    # stream: how long a member waits on the others before the sync fails and is sent again
    sync_timeout_s: float = 120.0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # Seer's divided, context-aware
    partial: PartialConfig = field(default_factory=PartialConfig)  # k1.5's partial rollouts
    repeat: RepeatConfig = field(default_factory=RepeatConfig)  # stop and penalize looping responses
    # Seer's grouped speculative decoding: drafts from the prompt's other samples, at most this many
    # tokens (0: off). The target model verifies every draft, so samples and log-probs stay the policy's.
    speculative_tokens: int = 0
    # draft only while an engine runs at most this many sequences (0: at any batch): vLLM's dynamic
    # speculative decoding schedule. Verifying drafts pays off in the tail, where batches are small.
    speculative_max_batch: int = 0
    # true: draft only where drafting has paid on each engine, per batch size (measured tokens per second
    # of step with and without drafts; rollout.speculation.SpeculationGate); false: whenever allowed
    # above. Off by default: on this CPU it drafted too rarely and lost to the fixed schedule (docs/rl.md)
    speculative_adaptive: bool = False
    # true: allow sampling at temperature != 1 or top_p < 1. The loss still takes log-probs at
    # temperature 1, so it then trains on samples of another policy than the one it assumes (docs/rl.md).
    off_policy_sampling: bool = False


@dataclass
class RLConfig:
    model: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    resources: ResourceConfig = field(default_factory=ResourceConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # test-time scaling curves during training
    plan: PlanConfig = field(default_factory=PlanConfig)  # the cluster `kvrl plan` sizes this config for

    def __post_init__(self):
        get_loss(self.loss.name)  # unknown names fail here, listing the valid ones
        if self.learner.routing_replay and not self.trainer.routing_replay:
            raise ValueError(
                "learner.routing_replay is set by kvrl rl from trainer.routing_replay: set that one instead"
            )
        if self.resources.rollout_actors < 1:
            raise ValueError("resources.rollout_actors must be >= 1 for RL")
        ep, ranks = self.learner.expert_parallel, self.resources.learner_ranks
        if ep > 1 and ranks % ep:
            raise ValueError(f"learner.expert_parallel={ep} must divide resources.learner_ranks={ranks}")
        sampling = self.rollout.sampling
        if not self.rollout.off_policy_sampling:
            for key, value in (("temperature", sampling.temperature), ("top_p", sampling.top_p)):
                if value != 1.0:
                    raise ValueError(
                        f"rollout.sampling.{key}={value:g}: RL rollouts must be samples of the policy "
                        "itself (temperature 1, top_p 1), whose temperature-1 log-probs the loss uses. "
                        "Set rollout.off_policy_sampling=true to train on them anyway (docs/rl.md: sampling)"
                    )
        if self.rollout.speculative_tokens < 0:
            raise ValueError(
                f"rollout.speculative_tokens must be >= 0 (0: off), got {self.rollout.speculative_tokens}"
            )
        chunked = self.rollout.partial.enabled or self.rollout.schedule.divided
        if sampling.thinking_budget is not None and chunked:
            raise ValueError(
                "rollout.sampling.thinking_budget needs whole responses sampled in one piece: turn off "
                "rollout.partial.enabled and rollout.schedule.divided, or drop the budget"
            )
        records = self.rollout.record_routes or self.trainer.routing_replay
        if self.rollout.enforce_eager is False and records:
            raise ValueError(
                "rollout.enforce_eager=false cannot record routes (rollout.record_routes or "
                "trainer.routing_replay): the routing capture runs Python callbacks that a CUDA graph skips"
            )
        tp, gpus = self.rollout.tensor_parallel_size, self.resources.rollout_gpus
        if tp < 1 or (gpus >= 1 and gpus != tp):
            raise ValueError(
                f"rollout.tensor_parallel_size={tp} must be >= 1 and equal resources.rollout_gpus={gpus:g} "
                "(each engine's GPUs)"
            )
