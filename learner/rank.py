"""One DeepSpeed learner rank: teacher-forced log-probs, steps on a given loss, weight export. No Ray here.

``actors/learner.py`` runs N of these as Ray actors (gloo on CPU, NCCL on GPU). Every method that
touches ZeRO-partitioned parameters is collective: all ranks call it, with the same number of
micro-batches (:func:`shard_for_ranks` pads shards to equal size with inactive samples).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from kimivl import KimiVLProcessor
from kimivl.weight_stream import official_tensors
from learner import qkclip
from learner.distributed import ZERO_BUCKETS, device_kind, load_model, start_distributed
from learner.experience import (
    Collated,
    Experience,
    by_length,
    collate,
    collate_row,
    inactive,
    micro_batches,
    pack_by_tokens,
)
from learner.expert_parallel import autoep_config, check_expert_parallel, ep_layers, hf_state, moe_groups
from learner.kernels import pin_kernels
from learner.logprobs import batch_logprobs
from learner.loss import LossFn, LossInputs, Mean, combine, policy_metrics
from learner.optim import (
    check_groups,
    muon_optimizer_config,
    muon_param_groups,
    optimizer_summary,
)
from learner.packing import SFTExample, collate_packed, packed_logits
from learner.routing import RoutingReplay
from runkit.files import replacing

log = logging.getLogger(__name__)

# The loss of a packed teacher-forced batch: (logits, targets, loss_mask, normalizer) -> (loss, sums).
TokenLossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]

# Files of a Kimi-VL directory besides the weights, copied into exported checkpoints.
ASSET_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "processor_config.json",
    "preprocessor_config.json",
    "generation_config.json",
)
# What a step reports with QK-clip on (learner/qkclip.py clip), the same on every rank.
QK_CLIP_METRICS = ("qk_clip_heads", "max_logit")
# Sub-directory of a checkpoint that holds DeepSpeed's own checkpoint (the full training state).
STATE_DIR = "learner_state"


@dataclass
class LearnerConfig:
    """Optimizer and DeepSpeed settings of the learner group."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    # muon: Moonlight's scaled Muon for the matrices, AdamW for the rest, one lr (learner/optim.py)
    optimizer: Literal["adamw", "muon"] = "adamw"
    lr: float = 1e-5
    # RL: linear warm-up over the first optimizer steps. Adam's first steps move every weight by about
    # lr whatever its gradient's size, which a small model does not survive at lrs that learn later.
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    muon_momentum: float = 0.95  # Nesterov, as DeepSpeed's Muon fixes it
    # With muon: the lr of the parameters Muon does not take (embeddings, lm_head, norms, biases) as a
    # multiple of lr. 1 is Moonlight's one lr for all; a small model, where those are a quarter of the
    # weights, may want its own (modded-nanogpt gives them theirs; 3 trains the tiny model's SFT best,
    # kvrl bench optim).
    muon_adamw_lr_ratio: float = 1.0
    # By the global gradient norm. Not with muon: DeepSpeed 0.19 would clip by the norm of the
    # orthogonalized updates, which are not gradients, and shrink every step (0 there, logged).
    grad_clip: float = 1.0
    micro_batch_size: int = 4
    # > 0: RL micro-batches are responses packed end to end into one row of at most this many tokens
    # (prompt + response; a longer sequence gets a row of its own), each attending only to itself,
    # instead of micro_batch_size right-padded rows (learner/experience.py). Same loss and gradients.
    micro_batch_tokens: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: float32 on CPU, bfloat16 on GPU
    gradient_checkpointing: bool = False
    # Log-probs from logits of this many response positions at a time (0: all at once); the rest are
    # recomputed in backward. Bounds the (positions x vocabulary) logits on long responses.
    logits_chunk: int = 2048
    # QK-clip (Kimi K2): tau, the largest pre-softmax logit any head may keep after a step (0: off; K2
    # used 100). learner/qkclip.py.
    qk_clip: float = 0.0
    # Rollout routing replay (learner/routing.py): the MoE layers route each token to the experts the
    # rollout recorded (samples that carry routes); false: they route themselves and the recorded
    # routes are only compared. Set by kvrl rl from trainer.routing_replay.
    routing_replay: bool = False
    # Streamed weight sync (learner/stream.py): the largest unit sent at once, MiB. Rank 0's extra
    # memory during a sync is at most the largest module's parameters plus one bucket.
    sync_bucket_mb: float = 64.0
    # Accumulate gradients over micro-batches in float32 when training in bfloat16 (DeepSpeed's
    # data_types.grad_accum_dtype): an RL step sums dozens of micro-batches, and bf16's 8-bit mantissa
    # drops the small ones. Costs 4 bytes a parameter of gradient (over the ranks, ZeRO >= 2) instead of 2.
    fp32_grad_accum: bool = True
    # Expert parallelism (learner/expert_parallel.py, DeepSpeed AutoEP): the routed experts split over
    # this many ranks, tokens sent to them by all-to-all; 1: off (experts under ZeRO like the rest).
    # Must divide the learner ranks and the routed experts. With learner.optimizer=adamw.
    expert_parallel: int = 1

    def __post_init__(self):
        if self.micro_batch_tokens < 0:
            raise ValueError(
                f"micro_batch_tokens must be >= 0 (0: padded rows), got {self.micro_batch_tokens}"
            )
        if self.sync_bucket_mb <= 0:
            raise ValueError(f"sync_bucket_mb must be > 0, got {self.sync_bucket_mb}")
        if self.muon_adamw_lr_ratio <= 0:
            raise ValueError(f"muon_adamw_lr_ratio must be > 0, got {self.muon_adamw_lr_ratio}")
        if self.expert_parallel < 1:
            raise ValueError(f"expert_parallel must be >= 1 (1: off), got {self.expert_parallel}")
        if self.expert_parallel > 1 and self.optimizer != "adamw":
            # AutoEP keeps each expert's gate and up matrices apart, where transformers fuses them:
            # Muon would orthogonalize other matrices (at another Moonlight scale) than without EP
            raise ValueError(
                f"expert_parallel={self.expert_parallel} takes optimizer=adamw: with optimizer="
                f"{self.optimizer!r} AutoEP's split gate and up matrices would make Muon another "
                "optimizer than without expert parallelism"
            )
        if self.qk_clip < 0:
            raise ValueError(f"qk_clip must be >= 0 (0: off), got {self.qk_clip}")
        if self.qk_clip and self.zero_stage == 0:
            raise ValueError(
                "qk_clip needs zero_stage >= 1: it rescales DeepSpeed's fp32 master weights, which "
                "stage 0 does not keep apart"
            )


def learner_layout(ranks: int, zero_stage: int, expert_parallel: int = 1) -> dict[str, int]:
    """What DeepSpeed's saved state depends on: it loads back only into the same ranks, ZeRO stage and
    expert parallelism (named only when on, so states saved before it existed still match)."""
    out = {"learner_ranks": ranks, "zero_stage": zero_stage}
    return out | ({"expert_parallel": expert_parallel} if expert_parallel > 1 else {})


def learner_state_dir(ckpt: Path, saved: dict[str, int] | None, now: dict[str, int]) -> str | None:
    """The checkpoint to load the full training state from, or None (then the optimizer starts afresh
    from the checkpoint's weights). A state saved with another layout is an error naming the keys."""
    if not (Path(ckpt) / STATE_DIR).is_dir():
        log.warning("%s has no %s: the optimizer starts afresh (resume is not exact)", ckpt, STATE_DIR)
        return None
    if saved is not None and saved != now:
        keys = {
            "learner_ranks": "resources.learner_ranks",
            "zero_stage": "learner.zero_stage",
            "expert_parallel": "learner.expert_parallel",
        }
        was, nowv = ({k: d.get(k, 1) for k in keys} for d in (saved, now))
        diffs = ", ".join(f"{keys[k]}={was[k]} (this run: {nowv[k]})" for k in keys if was[k] != nowv[k])
        raise ValueError(
            f"trainer.resume: {Path(ckpt) / STATE_DIR} was written with {diffs}; resume with the same "
            f"values, or delete {STATE_DIR} to continue from the weights with a fresh optimizer"
        )
    return str(ckpt)


def deepspeed_config(cfg: LearnerConfig, dtype: torch.dtype) -> dict[str, Any]:
    muon = cfg.optimizer == "muon"
    zero: dict[str, Any] = {"stage": cfg.zero_stage, "reduce_bucket_size": ZERO_BUCKETS["reduce_bucket_size"]}
    if cfg.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = ZERO_BUCKETS["stage3_prefetch_bucket_size"]
    if muon:
        zero["reduce_scatter"] = False  # ZeRO-3's Muon gathers each matrix's gradient whole
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,  # kvrl forms micro-batches itself
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0 if muon else cfg.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if cfg.fp32_grad_accum and dtype != torch.float32 and cfg.zero_stage >= 1:
        # (DeepSpeed has no 16-bit model with fp32 accumulation without ZeRO: stage 0 keeps the dtype)
        out["data_types"] = {"grad_accum_dtype": "fp32"}
    if muon:
        out["optimizer"] = muon_optimizer_config(
            lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum, betas=cfg.betas, eps=cfg.eps
        )
    return out


class Learner:
    """One rank. ``state_dir``: a checkpoint's :data:`STATE_DIR` parent to resume the full training
    state from (optimizer moments, fp32 master weights, step count); the weights in ``model_path`` are
    then only the starting point that DeepSpeed's state overwrites."""

    def __init__(
        self,
        model_path: str,
        cfg: LearnerConfig,
        rank: int = 0,
        world_size: int = 1,
        state_dir: str | None = None,
    ):
        import deepspeed  # lazy: the driver imports this module for its config types only

        self.cfg, self.rank, self.world_size, self.model_path = cfg, rank, world_size, str(model_path)
        device = start_distributed()
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
            cfg.dtype, torch.bfloat16 if device == "cuda" else torch.float32
        )
        model = load_model(self.model_path, self.dtype, deepspeed_config(cfg, self.dtype))
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        # QK-clip's recording attention (masked, packed rows included) before any packed one
        packed, clip = bool(cfg.micro_batch_tokens), bool(cfg.qk_clip)
        self.kernels = pin_kernels(model, device, packed=packed, qk_clip=clip)
        self.pad_id = KimiVLProcessor.from_pretrained(self.model_path).tokenizer.pad_token_id
        self.engine, self.optimizer, self.lr_scales = self._initialize(deepspeed, model)
        # hooks on the MoE routers (AutoEP's, once initialize has put them in); idle unless a batch has routes
        self.routing = RoutingReplay(self.engine.module)
        self.set_lr(cfg.lr)
        self.device = self.engine.device
        self.steps = 0
        if state_dir is not None:
            self.load_state(state_dir)

    def _initialize(self, deepspeed, model: torch.nn.Module):
        """DeepSpeed's engine and optimizer, and the lr multiplier of each named param group."""
        cfg, config = self.cfg, deepspeed_config(self.cfg, self.dtype)
        if cfg.optimizer == "adamw":
            return (*self._adamw(deepspeed, model, config), {})
        if device_kind() == "cpu":
            # DeepSpeed wraps Newton-Schulz in torch.compile; on CPU that builds C++ per matrix shape
            # (minutes on the tiny model) to save little. Eager there; compiled on GPU.
            torch._dynamo.config.disable = True
        if cfg.grad_clip and self.rank == 0:
            log.warning("learner.grad_clip=%s is not applied with learner.optimizer=muon", cfg.grad_clip)
        groups, scales = muon_param_groups(model, cfg.weight_decay, cfg.muon_adamw_lr_ratio)
        engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=config)
        check_groups(getattr(optimizer, "optimizer", optimizer).param_groups, scales)
        if self.rank == 0:
            counts = optimizer_summary(engine.module)
            log.info(
                "optimizer: Muon on %d tensors (%d parameters), AdamW on %d tensors (%d parameters)",
                counts["muon"]["tensors"],
                counts["muon"]["parameters"],
                counts["adamw"]["tensors"],
                counts["adamw"]["parameters"],
            )
        return engine, optimizer, scales

    def _adamw(self, deepspeed, model: torch.nn.Module, config: dict[str, Any]):
        cfg, text = self.cfg, model.config.text_config
        adamw = functools.partial(
            torch.optim.AdamW, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas), eps=cfg.eps
        )
        if cfg.expert_parallel == 1:
            engine, optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=adamw(model.parameters()), config=config
            )
            return engine, optimizer
        check_expert_parallel(cfg.expert_parallel, self.world_size, text.n_routed_experts)
        config["expert_parallel"] = autoep_config(text, cfg.expert_parallel)
        # built by DeepSpeed from the parameters AutoEP leaves, the experts in groups of their own
        engine, optimizer, _, _ = deepspeed.initialize(
            model=model, model_parameters=model.parameters(), optimizer=moe_groups(adamw), config=config
        )
        return engine, optimizer

    # -- forward ---------------------------------------------------------------------------------

    def _response_logprobs(self, batch: Collated) -> tuple[torch.Tensor, torch.Tensor]:
        head = self.engine.module.language_model.lm_head
        return batch_logprobs(self.engine, head, batch, self.cfg.logits_chunk)

    @torch.no_grad()
    def logprobs(self, samples: Sequence[Experience], replay: bool | None = None) -> list[list[float]]:
        """Teacher-forced log-probs of each sample's response tokens (collective under ZeRO-3); samples
        with routes replay them if ``replay`` (default: ``routing_replay``), else only compare them."""
        replay = self.cfg.routing_replay if replay is None else replay
        self.engine.eval()
        out: list[list[float]] = [[] for _ in samples]
        self.routing.disagreement(reset=True)  # what routing_disagreement() reads: this pass alone
        for mb in self._micro_batches(samples):
            batch = self._collate([samples[i] for i in mb] or [inactive(samples[0])])
            with self.routing.active(batch.routes, replay):
                lp, _ = self._response_logprobs(batch)
            for b, i in enumerate(mb):
                out[i] = lp[b, : len(samples[i].response_ids)].tolist()
        return out

    def _micro_batches(self, samples: Sequence[Experience]) -> list[list[int]]:
        """Indices of ``samples`` per micro-batch: ``micro_batch_size`` of them from a length-sorted
        order, or packed to ``micro_batch_tokens``. Packed counts differ between ranks, and every rank
        must run as many forwards (ZeRO's collectives): the short ones get empty micro-batches, which
        the callers fill with an inactive sample."""
        if not self.cfg.micro_batch_tokens:
            return micro_batches(by_length(samples), self.cfg.micro_batch_size)
        bins = pack_by_tokens(samples, self.cfg.micro_batch_tokens)
        if torch.distributed.is_initialized() and self.world_size > 1:
            count = torch.tensor([len(bins)], device=self.device)
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
            bins += [[] for _ in range(int(count.item()) - len(bins))]
        return bins

    def _collate(self, samples: Sequence[Experience]) -> Collated:
        pack = collate_row if self.cfg.micro_batch_tokens else collate
        return pack(samples, self.pad_id).to(self.device)

    # -- training --------------------------------------------------------------------------------

    def train_step(
        self,
        samples: Sequence[Experience],
        loss_fn: LossFn,
        global_batch: int,
        lr: float | None = None,
    ) -> dict[str, Mean]:
        """One optimizer step over this rank's samples, accumulated over micro-batches.

        ``loss_fn(inputs, normalizer) -> (loss, metrics)`` runs on each micro-batch (``rl/losses.py``:
        ``PolicyLoss.bound``). Each sample carries its advantage, computed on the driver over its whole
        group. ``global_batch`` is the number of real samples over all ranks: each rank's loss is divided by
        global_batch / world_size, and DeepSpeed averages gradients over ranks, so the step's gradient is
        that of the batch mean however the batch is split. ``lr``: this step's learning rate (default:
        leave the optimizer's as it is). Metrics come back as sums with counts (:class:`Mean`): entropy
        and ``kl`` per trained token, ``log_ratio_sq`` per sample, ``loss`` and ``grad_norm`` per rank.
        """
        if lr is not None:
            self.set_lr(lr)
        self.engine.train()
        normalizer = global_batch / self.world_size
        groups = [[samples[i] for i in mb] or [inactive(samples[0])] for mb in self._micro_batches(samples)]
        parts: list[dict[str, Mean]] = []
        loss_sum, bad = 0.0, torch.zeros(1, device=self.device)
        with self._recording():
            for k, mb in enumerate(groups):
                batch = self._collate(mb)
                if batch.old_logprobs is None:
                    raise ValueError("train_step needs old log-probs on every sample")
                self.engine.set_gradient_accumulation_boundary(k == len(groups) - 1)
                # forward and backward: gradient checkpointing routes again in backward
                with self.routing.active(batch.routes, self.cfg.routing_replay):
                    logprobs, entropy = self._response_logprobs(batch)
                    inputs = LossInputs(
                        logprobs, batch.old_logprobs, batch.response_mask, batch.advantages, batch.pg_weights
                    )
                    loss, metrics = loss_fn(inputs, normalizer)
                    loss_sum += float(self._backward(loss, logprobs, k, bad).detach())
                parts.append({**metrics, **policy_metrics(inputs, entropy)})
        stepped, clipped = self._step(bad)
        if not stepped:
            return {"skipped": Mean(1.0, 1.0)}
        out = combine(parts)
        out["loss"] = Mean(loss_sum, 1.0)  # this rank's share: the ranks' mean is the batch loss
        out["grad_norm"] = Mean(float(self.engine.get_global_grad_norm() or 0.0), 1.0)
        out["skipped"] = Mean(0.0, 1.0)
        out.update({name: Mean(value, 1.0) for name, value in clipped.items()})
        return out

    def _backward(self, loss: torch.Tensor, graph: torch.Tensor, k: int, bad: torch.Tensor) -> torch.Tensor:
        """Backward of ``loss``; a NaN/inf loss is counted in ``bad`` and replaced by a zero one.

        The backward still runs on a bad micro-batch: its collectives must stay in step across ranks.
        """
        if not torch.isfinite(loss):
            log.warning("non-finite loss %s in micro-batch %d on rank %d", loss.item(), k, self.rank)
            bad += 1
            loss = (graph * 0.0).sum()
        self.engine.backward(loss, scale_wrt_gas=False)
        return loss

    def _step(self, bad: torch.Tensor) -> tuple[bool, dict[str, float]]:
        """The optimizer step, unless any rank saw a non-finite loss (then all drop their gradients);
        then QK-clip, when on (its metrics come back)."""
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad)  # every rank skips, or none does
        maxima = self._max_logits() if self.cfg.qk_clip else None
        if bad.item() > 0:
            self.engine.zero_grad()
            self.engine.optimizer.zero_grad()
            return False, {}
        self.engine.step()
        self.steps += 1
        if maxima is None:
            return True, {}
        return True, qkclip.clip(self.engine.module, self.cfg.qk_clip, maxima, self._scale_rows)

    def _recording(self):
        """Inside: the training forwards record each head's largest logit (QK-clip), when on."""
        return qkclip.recording(self.engine.module) if self.cfg.qk_clip else contextlib.nullcontext()

    def _max_logits(self) -> list[torch.Tensor]:
        """Each layer's (H,) largest logit of this step over all ranks (collective)."""
        layers = qkclip.attention_layers(self.engine.module)
        seen = qkclip.take_max_logits(self.engine.module)
        heads = [m.num_heads for m in layers]
        # -inf for a layer no forward reached on this rank
        none = [torch.full((h,), -math.inf, device=self.device) for h in heads]
        stacked = torch.cat([(t if t is not None else n).float() for t, n in zip(seen, none, strict=True)])
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(stacked, op=torch.distributed.ReduceOp.MAX)
        return list(stacked.split(heads))

    def _scale_rows(self, param: torch.nn.Parameter, factors: torch.Tensor) -> None:
        """Multiply a weight's rows by ``factors`` in DeepSpeed's fp32 master copy and in the module
        (every rank; collective under ZeRO, which gathers the master copy)."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

        master = safe_get_full_fp32_param(param)
        if master is None:  # no master copy apart: the module weight is what the optimizer steps
            param.data.mul_(factors.to(param.device, param.dtype)[:, None])
            return
        scaled = master.view(len(factors), -1) * factors.to(master.device, master.dtype)[:, None]
        safe_set_full_fp32_param(param, scaled)
        if self.cfg.zero_stage == 3:
            with self._gathered_one(param):
                if self.rank == 0:
                    param.data.copy_(scaled.view_as(param.data).to(param.dtype))
        else:
            param.data.copy_(scaled.view_as(param.data).to(param.dtype))

    def _gathered_one(self, param: torch.nn.Parameter):
        import deepspeed

        return deepspeed.zero.GatheredParameters([param], modifier_rank=0)

    # -- SFT -------------------------------------------------------------------------------------

    def set_lr(self, lr: float) -> None:
        """Every group's lr; Muon's matrices get theirs times Moonlight's scale (learner/optim.py)."""
        for group in getattr(self.optimizer, "optimizer", self.optimizer).param_groups:
            group["lr"] = lr * self.lr_scales.get(group.get("name"), 1.0)

    def sft_step(
        self, rows: Sequence[Sequence[SFTExample]], total_targets: int, lr: float, loss_fn: TokenLossFn
    ) -> dict[str, float]:
        """One optimizer step on packed rows with ``loss_fn(logits, targets, loss_mask, normalizer) ->
        (loss, {"nll_sum", "tokens"})`` (``sft/loss.py``); the gradient is that of the token mean over
        ``total_targets`` (the step's target tokens over all ranks): each rank divides its summed NLL by
        total_targets / world_size, and DeepSpeed averages the ranks' gradients."""
        self.set_lr(lr)
        self.engine.train()
        groups = micro_batches(list(rows), self.cfg.micro_batch_size)
        normalizer = max(total_targets, 1) / self.world_size
        totals, bad = {"nll_sum": 0.0, "tokens": 0.0}, torch.zeros(1, device=self.device)
        with self._recording():
            for k, mb in enumerate(groups):
                batch = collate_packed(mb, self.pad_id).to(self.device)
                self.engine.set_gradient_accumulation_boundary(k == len(groups) - 1)
                logits = packed_logits(self.engine, batch)
                loss, metrics = loss_fn(logits, batch.targets, batch.loss_mask, normalizer)
                self._backward(loss, logits, k, bad)
                for name in totals:
                    totals[name] += metrics[name]
        stepped, clipped = self._step(bad)
        if not stepped:
            return {**totals, "skipped": 1.0}
        grad_norm = float(self.engine.get_global_grad_norm() or 0.0)
        return {**totals, "skipped": 0.0, "grad_norm": grad_norm, **clipped}

    @torch.no_grad()
    def sft_eval(self, rows: Sequence[Sequence[SFTExample]], loss_fn: TokenLossFn) -> dict[str, float]:
        """Summed NLL and target count over ``rows`` by ``loss_fn`` (collective under ZeRO-3)."""
        self.engine.eval()
        totals = {"nll_sum": 0.0, "tokens": 0.0}
        for mb in micro_batches(list(rows), self.cfg.micro_batch_size):
            batch = collate_packed(mb, self.pad_id).to(self.device)
            _, metrics = loss_fn(packed_logits(self.engine, batch), batch.targets, batch.loss_mask, 1.0)
            for name in totals:
                totals[name] += metrics[name]
        return totals

    def routing_disagreement(self) -> list[Mean]:
        """Per MoE layer, over the last :meth:`logprobs` pass (the weights that start learning): the share
        of tokens with recorded routes whose recorded expert set differs from this model's own choice."""
        d = self.routing
        return [Mean(float(a), float(b)) for a, b in zip(d.differing, d.counted, strict=True)]

    def reset_optimizer(self) -> None:
        """Drop Adam's moments and Muon's momentum (Kimi k1.5 resets the optimizer at each mirror-descent
        iteration)."""
        base = getattr(self.optimizer, "optimizer", self.optimizer)
        base.state.clear()

    # -- full training state ---------------------------------------------------------------------

    def save_state(self, checkpoint_dir: str | Path) -> None:
        """DeepSpeed's checkpoint of every rank under ``checkpoint_dir/learner_state``: Adam moments and
        fp32 master weights (ZeRO-partitioned, one file per rank) and the module. Collective; the
        directory must be one that every rank sees."""
        self.engine.save_checkpoint(str(checkpoint_dir), tag=STATE_DIR, save_latest=False)

    def load_state(self, checkpoint_dir: str | Path) -> None:
        """Restore what :meth:`save_state` wrote (same world size and ZeRO stage). Collective."""
        folder = Path(checkpoint_dir) / STATE_DIR
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no learner state in this checkpoint")
        path, _ = self.engine.load_checkpoint(
            str(checkpoint_dir), tag=STATE_DIR, load_lr_scheduler_states=False
        )
        if path is None:
            raise RuntimeError(f"{folder}: DeepSpeed could not load the learner state")
        self.steps = self.engine.global_steps

    # -- weights ---------------------------------------------------------------------------------

    def _gathered(self):
        """Context in which every parameter is whole on every rank (a no-op below ZeRO-3). Collective."""
        import deepspeed

        params = list(self.engine.module.parameters())
        return deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=self.cfg.zero_stage == 3)

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """Full weights under the official checkpoint names on rank 0 (None elsewhere). Collective."""
        module = self.engine.module
        with self._gathered():
            if self.rank != 0:
                return self._take_part(module)
            pairs = ((n, v) for name, t in hf_state(module) for n, v in official_tensors(name, t))
            return {name: t.detach().to("cpu", copy=True) for name, t in pairs}

    @staticmethod
    def _take_part(module) -> None:
        """What a rank other than 0 does while rank 0 reads the gathered model: AutoEP layers' experts
        are gathered over their EP groups as ``hf_state`` walks them, so every rank walks those."""
        if ep_layers(module):
            for _ in hf_state(module):
                pass

    # -- streamed weight sync (learner/stream.py) ------------------------------------------------

    @property
    def sender(self):
        if getattr(self, "_sender", None) is None:
            from learner.stream import WeightSender

            bucket = int(self.cfg.sync_bucket_mb * 2**20)
            self._sender = WeightSender(self.engine.module, self.cfg.zero_stage == 3, bucket)
        return self._sender

    def stream_plan(self) -> dict:
        """What every receiver needs to take a sync: names, dtypes and shapes in order, the bucket."""
        specs = self.sender.specs
        return {
            "names": [s.name for s in specs],
            "dtype_names": [s.dtype for s in specs],
            "shapes": [list(s.shape) for s in specs],
            "bucket_bytes": self.sender.bucket_bytes,
        }

    def stream_listen(self, host: str, world_size: int, timeout_s: float) -> int:
        """Rank 0: serve the stream group's rendezvous; its port."""
        from kimivl.weight_stream import listen

        self._stream, self._stream_store = None, listen(host, world_size, timeout_s)
        return self._stream_store.port

    def stream_join(self, host: str, world_size: int, backend: str, timeout_s: float) -> None:
        """Rank 0: join the stream group as its sender (blocks until every engine worker has)."""
        from kimivl.weight_stream import join

        store = self._stream_store
        self._stream = join(host, store.port, 0, world_size, backend, timeout_s, store=store)

    def stream_send(self) -> dict[str, float]:
        """Send the weights down the stream (rank 0); the other ranks take part in the gathers."""
        return self.sender.send(self._stream if self.rank == 0 else None)

    def export_hf(self, out_dir: str | Path) -> str | None:
        """Write an HF-format checkpoint (weights + tokenizer/processor files) on rank 0. Collective.

        The directory appears whole or not at all: it is written beside and renamed into place.
        """
        module = self.engine.module
        if self.rank != 0:
            with self._gathered():  # every rank takes part in gathering the weights
                return self._take_part(module)
        with replacing(out_dir) as tmp, self._gathered():
            # transformers' layout: AutoEP layers given back as DeepseekV3MoE's tensors
            module.save_pretrained(tmp, state_dict=dict(hf_state(module)) if ep_layers(module) else None)
            for name in ASSET_FILES:
                src = Path(self.model_path) / name
                if src.exists():
                    shutil.copy2(src, tmp / name)
        return str(out_dir)
