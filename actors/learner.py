"""The learner group: N DeepSpeed ranks (``learner.rank.Learner``) as Ray actors. Plumbing only: the
driver hands in samples that carry their advantages, and the loss callable to run."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray

from actors.memory import peak_rss_mb, reset_peak_rss, rss_mb
from actors.placement import ACTOR_FAILURES, pin_threads
from learner.experience import Experience, inactive, shard_for_ranks
from learner.loss import LossFn, Mean, combine
from learner.packing import SFTExample
from learner.rank import QK_CLIP_METRICS, Learner, LearnerConfig, TokenLossFn

log = logging.getLogger(__name__)


@ray.remote
class LearnerActor:
    def __init__(self, rank: int, world_size: int, cores: Sequence[int] = ()):
        pin_threads(cores, "learner_cores")
        self.rank, self.world_size = rank, world_size
        self.learner = None

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port, for rank 0 to host the process-group rendezvous."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def setup(
        self, model_path: str, cfg: LearnerConfig, master_addr: str, master_port: int, state_dir=None
    ) -> None:
        import torch

        gpus = ray.get_gpu_ids()
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0",
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        if not gpus and not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"
        self.learner = Learner(model_path, cfg, self.rank, self.world_size, state_dir)

    def logprobs(self, samples: list[Experience], replay: bool | None = None) -> list[list[float]]:
        return self.learner.logprobs(samples, replay)

    def train_step(self, samples, loss_fn, global_batch, lr=None) -> dict[str, Mean]:
        return self.learner.train_step(samples, loss_fn, global_batch, lr)

    def reset_optimizer(self) -> None:
        self.learner.reset_optimizer()

    def routing_disagreement(self) -> list[Mean]:
        return self.learner.routing_disagreement()

    def sft_step(self, rows, total_targets: int, lr: float, loss_fn) -> dict[str, float]:
        return self.learner.sft_step(rows, total_targets, lr, loss_fn)

    def sft_eval(self, rows, loss_fn) -> dict[str, float]:
        return self.learner.sft_eval(rows, loss_fn)

    def full_state(self):
        return self.learner.full_state()

    def stream_plan(self) -> dict:
        return self.learner.stream_plan()

    def stream_listen(self, world_size: int, timeout_s: float) -> tuple[str, int]:
        host = ray.util.get_node_ip_address()
        return host, self.learner.stream_listen(host, world_size, timeout_s)

    def stream_join(self, host: str, world_size: int, backend: str, timeout_s: float) -> None:
        self.learner.stream_join(host, world_size, backend, timeout_s)

    def stream_send(self) -> dict[str, float]:
        return self.learner.stream_send()

    def ping(self) -> None:
        """Answers once every task sent before it is done (an actor runs its tasks in order)."""

    def rss_mb(self) -> float:
        return rss_mb()

    def reset_peak_rss(self) -> float:
        return reset_peak_rss()

    def peak_rss_mb(self) -> float:
        return peak_rss_mb()

    def stream_bounds(self) -> dict[str, int]:
        return self.learner.sender.bounds()

    def export_hf(self, out_dir: str) -> str | None:
        return self.learner.export_hf(out_dir)

    def save_state(self, checkpoint_dir: str) -> None:
        self.learner.save_state(checkpoint_dir)


PEER_DEATH_WAIT_S = 30.0  # how long a rank's collective error waits to be explained by a dead peer


def gather(refs: Sequence[ray.ObjectRef]) -> list:
    """Every rank's result, raising as soon as one rank fails: the others would otherwise wait in a
    collective for the dead one until the process-group timeout (tens of minutes).

    A killed rank usually shows first as its peers' broken collective (gloo: "Connection reset by
    peer"), before Ray reports the death itself; the run's lifecycle restarts on a death but stops on
    any other error. So an error is held for up to ``PEER_DEATH_WAIT_S`` while the other ranks are
    asked whether one died, and that death is raised instead."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(done)
        except ACTOR_FAILURES:
            raise
        except ray.exceptions.RayTaskError as error:
            death = _peer_death(pending)
            if death is not None:
                raise death from error
            raise
    return ray.get(list(refs))


def _peer_death(refs: Sequence[ray.ObjectRef]) -> Exception | None:
    """The death of one of ``refs``' actors, if Ray reports one within ``PEER_DEATH_WAIT_S``."""
    deadline = time.monotonic() + PEER_DEATH_WAIT_S
    pending = list(refs)
    while pending and (left := deadline - time.monotonic()) > 0:
        done, pending = ray.wait(pending, num_returns=1, timeout=left)
        for ref in done:
            try:
                ray.get(ref)
            except ACTOR_FAILURES as death:
                return death
            except Exception:  # another rank's own error: keep looking for a death
                continue
    return None


class LearnerGroup:
    """Drives N learner ranks in lock step; every call fans out to all ranks and waits for all."""

    def __init__(
        self,
        model_path: str,
        cfg: LearnerConfig,
        world_size: int,
        actor_options: Sequence[dict[str, Any]] | None = None,
        state_dir: str | None = None,
        cores: Sequence[int] = (),
    ):
        """``state_dir``: a checkpoint to resume the full training state from (``Learner.load_state``);
        ``cores``: CPU ids every rank's threads are pinned to (``resources.learner_cores``)."""
        self.cfg, self.world_size = cfg, world_size
        options = list(actor_options or [{}] * world_size)
        self.actors = [
            LearnerActor.options(**options[r]).remote(r, world_size, list(cores)) for r in range(world_size)
        ]
        try:
            addr, port = ray.get(self.actors[0].address.remote())
            gather([a.setup.remote(model_path, cfg, addr, port, state_dir) for a in self.actors])
        except BaseException:
            self.shutdown()  # no rank outlives a group that did not come up
            raise
        log.info("learner group up: %d ranks, ZeRO-%d", world_size, cfg.zero_stage)
        # Calls reach the ranks from more than one thread (a pipelined run's rollout streams weights
        # into a replacement engine while the main thread learns): each call's tasks are submitted to
        # every rank under one lock, so all ranks run them in one order and their collectives match.
        self._order = threading.Lock()

    def _submit(self, call: Callable[[Any, int], ray.ObjectRef]) -> list[ray.ObjectRef]:
        """``call(actor, rank)`` for every rank, submitted together (see ``_order``)."""
        with self._order:
            return [call(a, r) for r, a in enumerate(self.actors)]

    def stream_send(self) -> list[ray.ObjectRef]:
        """Every rank's part of one streamed sync (``actors/stream.py`` waits on them)."""
        return self._submit(lambda a, r: a.stream_send.remote())

    def logprobs(self, samples: Sequence[Experience], replay: bool | None = None) -> list[list[float]]:
        """Teacher-forced log-probs, in sample order; ``replay`` overrides ``routing_replay`` for samples
        with routes (learner/routing.py)."""
        shards = shard_for_ranks(samples, self.world_size, inactive(samples[0]))
        results = gather(self._submit(lambda a, r: a.logprobs.remote(shards[r], replay)))
        out: list[list[float]] = [[] for _ in samples]
        for r, shard_result in enumerate(results):
            for j, lp in enumerate(shard_result[: len(samples[r :: self.world_size])]):
                out[r + j * self.world_size] = lp
        return out

    def train_step(
        self,
        samples: Sequence[Experience],
        loss_fn: LossFn,
        lr: float | None = None,
    ) -> dict[str, Mean]:
        """One optimizer step on every rank over the whole batch (advantages already on the samples).

        Metrics come back as :class:`Mean` s summed over ranks: token- and sample-weighted where they
        are per token or per sample; ``loss`` and ``grad_norm`` as the mean over ranks."""
        shards = shard_for_ranks(samples, self.world_size, inactive(samples[0]))
        return combine(
            gather(self._submit(lambda a, r: a.train_step.remote(shards[r], loss_fn, len(samples), lr)))
        )

    def reset_optimizer(self) -> None:
        gather(self._submit(lambda a, r: a.reset_optimizer.remote()))

    def routing_disagreement(self) -> list[float]:
        """Per MoE layer, over every rank's last log-prob pass: the share of tokens whose rollout-recorded
        experts differ from the learner's own choice (learner/routing.py)."""
        per_rank = gather(self._submit(lambda a, r: a.routing_disagreement.remote()))
        return [float(sum(layer, Mean(0.0, 0.0))) for layer in zip(*per_rank, strict=True)]

    def sft_step(
        self, rows: Sequence[Sequence[SFTExample]], lr: float, loss_fn: TokenLossFn
    ) -> dict[str, float]:
        """One SFT optimizer step over packed ``rows`` split across ranks; NLL and tokens summed.
        ``grad_norm`` is the norm of the global (rank-averaged) gradient, the same on every rank."""
        total = sum(ex.num_targets for row in rows for ex in row)
        shards = shard_for_ranks(rows, self.world_size, [])
        per_rank = gather(self._submit(lambda a, r: a.sft_step.remote(shards[r], total, lr, loss_fn)))
        out = {k: sum(m[k] for m in per_rank) for k in ("nll_sum", "tokens")}
        out["skipped"] = per_rank[0]["skipped"]
        out["grad_norm"] = per_rank[0].get("grad_norm", float("nan"))
        out.update({k: per_rank[0][k] for k in QK_CLIP_METRICS if k in per_rank[0]})  # alike on all ranks
        return out

    def sft_eval(self, rows: Sequence[Sequence[SFTExample]], loss_fn: TokenLossFn) -> dict[str, float]:
        shards = shard_for_ranks(rows, self.world_size, [])
        per_rank = gather(self._submit(lambda a, r: a.sft_eval.remote(shards[r], loss_fn)))
        return {k: sum(m[k] for m in per_rank) for k in ("nll_sum", "tokens")}

    def state_ref(self) -> ray.ObjectRef:
        """ObjectRef of rank 0's full weights (official names); all ranks take part in gathering them."""
        refs = self._submit(lambda a, r: a.full_state.remote())
        # Rank 0's result stays in the object store (the engines fetch it); its ping after it fails if
        # rank 0 dies, so a dead rank 0 fails fast as any other rank does.
        gather([self.actors[0].ping.remote(), *refs[1:]])
        return refs[0]

    def export_hf(self, out_dir: str) -> str:
        return gather(self._submit(lambda a, r: a.export_hf.remote(out_dir)))[0]

    def save_state(self, checkpoint_dir: str) -> None:
        """Every rank writes its part of the full training state into ``checkpoint_dir``."""
        gather(self._submit(lambda a, r: a.save_state.remote(checkpoint_dir)))

    def rss_mb(self) -> list[float]:
        """Host memory of each rank, MiB."""
        return gather(self._submit(lambda a, r: a.rss_mb.remote()))

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
