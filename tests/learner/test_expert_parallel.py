"""Expert parallelism (``learner.expert_parallel``, DeepSpeed AutoEP, ``learner/expert_parallel.py``) on
two ZeRO-3 ranks over gloo against the same two ranks without it: the same old log-probs with routes
replayed, the same loss, gradient norm and QK-clip for two optimizer steps, under ZeRO-3 and ZeRO-2, each rank
holding half of the experts; a checkpoint taken between the steps and loaded back gives the second step
again; the full state, the export and a streamed sync all give the weights of the run without expert
parallelism, under transformers' and the official names.

Every learner is its own process pair (spawned: DeepSpeed needs real processes), as is the stream's
receiver.
"""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch

from tests.helpers import as_learner_rank, free_port

TOL = 1e-5


def _diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:6]
    return max(float((torch.as_tensor(a[k]).float() - torch.as_tensor(b[k]).float()).abs().max()) for k in a)


def _rank(rank: int, model: str, port: int, folder: str, out) -> None:
    as_learner_rank(rank, port)
    import torch.distributed as dist

    from learner.rank import Learner, LearnerConfig
    from rl.losses import get_loss
    from tests.learner.test_packed_rl import experiences

    samples = experiences(model)[rank::2]  # this rank's shard: images and recorded routes among them
    loss_fn = get_loss("opmd").bound({"tau": 1.0})
    # (ZeRO stage, expert parallelism); QK-clip on at a tau low enough to act (it must keep working)
    kinds = {"plain": (3, 1), "ep": (3, 2), "ep_zero2": (2, 2)}
    learners = {
        kind: Learner(
            model,
            LearnerConfig(
                zero_stage=z, lr=1e-3, micro_batch_size=2, routing_replay=True, expert_parallel=e, qk_clip=1.0
            ),
            rank,
            2,
        )
        for kind, (z, e) in kinds.items()
    }
    got: dict = {"rank": rank}
    ep = learners["ep"]
    # ZeRO-3 partitions the experts only over the ranks that hold the same ones (none here): ds_numel
    local = sum(p.ds_numel for n, p in ep.engine.module.named_parameters() if ".experts.w" in n)
    whole = sum(p.ds_numel for n, p in learners["plain"].engine.module.named_parameters() if ".experts." in n)
    got["expert_share"] = local / whole
    groups = ep.optimizer.optimizer.param_groups if hasattr(ep.optimizer, "optimizer") else []
    got["moe_groups"] = sum(1 for g in groups if g.get("moe"))
    lps = {kind: learner.logprobs(samples) for kind, learner in learners.items()}
    got["logprob_diff"] = max(
        abs(x - y)
        for kind in ("ep", "ep_zero2")
        for a, b in zip(lps["plain"], lps[kind], strict=True)
        for x, y in zip(a, b, strict=True)
    )
    for s, lp in zip(samples, lps["plain"], strict=True):
        s.old_logprobs = [x - 0.01 for x in lp]  # a moved policy: tau acts
    steps = {kind: [] for kind in kinds}
    for kind, learner in learners.items():
        steps[kind].append(learner.train_step(samples, loss_fn, 8))
    eps = ("ep", "ep_zero2")
    for kind in eps:  # between the steps
        learners[kind].save_state(os.path.join(folder, kind))
    for kind, learner in learners.items():
        steps[kind].append(learner.train_step(samples, loss_fn, 8))
    states = {kind: learner.full_state() for kind, learner in learners.items()}
    again, resumed = {}, {}
    for kind in eps:
        learners[kind].load_state(os.path.join(folder, kind))
        again[kind] = {m: float(v) for m, v in learners[kind].train_step(samples, loss_fn, 8).items()}
        resumed[kind] = learners[kind].full_state()
    got["steps"] = {k: [{m: float(v) for m, v in step.items()} for step in v] for k, v in steps.items()}
    got["again"] = again
    if rank == 0:
        got["state_diff"] = max(_diff(states["plain"], states[kind]) for kind in eps)
        got["resumed_diff"] = max(_diff(states[kind], resumed[kind]) for kind in eps)
        got["plain_state"] = {k: v.numpy() for k, v in states["plain"].items()}  # not shared memory
    ep.export_hf(os.path.join(folder, "export"))
    if rank == 0:
        out.put(("port", ep.stream_listen("127.0.0.1", 2, 120)))
        got["plan"] = ep.stream_plan()
        out.put(("plan", got["plan"]))
        ep.stream_join("127.0.0.1", 2, "gloo", 120)
    ep.stream_send()
    out.put((rank, got))
    dist.destroy_process_group()


def _receiver(port: int, plan: dict, out) -> None:
    from kimivl.weight_stream import TensorSpec, join, unit_size, units, unpack

    stream = join("127.0.0.1", port, 1, 2, "gloo", 120)
    specs = [
        TensorSpec(*spec)
        for spec in zip(plan["names"], plan["dtype_names"], map(tuple, plan["shapes"]), strict=True)
    ]
    got = {}
    for members in units(specs, plan["bucket_bytes"]):
        part = [specs[i] for i in members]
        size, _ = unit_size(part, plan["bucket_bytes"])
        buffer = torch.empty(size, dtype=torch.uint8)
        stream.broadcast(buffer)
        got.update((name, t.clone()) for name, t in unpack(buffer, part))
    out.put(("received", {k: v.numpy() for k, v in got.items()}))


@pytest.mark.slow
def test_expert_parallel_ranks_train_checkpoint_export_and_sync_as_without_it(tiny_dir, tmp_path):
    from kimivl import KimiVLForConditionalGeneration

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    ranks = [ctx.Process(target=_rank, args=(r, str(tiny_dir), port, str(tmp_path), out)) for r in (0, 1)]
    for p in ranks:
        p.start()
    got: dict = {}
    while "plan" not in got:
        key, value = out.get(timeout=600)
        got[key] = value
    receiver = ctx.Process(target=_receiver, args=(got["port"], got["plan"], out))
    receiver.start()
    while not {0, 1, "received"} <= got.keys():
        key, value = out.get(timeout=300)
        got[key] = value
    for p in (*ranks, receiver):
        p.join(60)
        assert p.exitcode == 0

    for rank in (0, 1):
        r = got[rank]
        assert r["expert_share"] == pytest.approx(0.5)  # each rank holds half of the routed experts
        assert r["moe_groups"] >= 1  # the experts' own optimizer group: reduced over their EP peers only
        assert r["logprob_diff"] <= TOL
        assert r["steps"]["plain"][0]["qk_clip_heads"] > 0  # QK-clip acted
        for kind in ("ep", "ep_zero2"):
            for plain, ep in zip(r["steps"]["plain"], r["steps"][kind], strict=True):
                assert ep["skipped"] == plain["skipped"] == 0.0 and plain["grad_norm"] > 0
                for key in (
                    "loss",
                    "grad_norm",
                    "kl",
                    "log_ratio_sq",
                    "entropy",
                    "qk_clip_heads",
                    "max_logit",
                ):
                    assert ep[key] == pytest.approx(plain[key], rel=TOL, abs=1e-7), (rank, kind, key)
            # the checkpoint between the steps, loaded back: the second step again
            for key in ("loss", "grad_norm", "kl"):
                assert r["again"][kind][key] == pytest.approx(r["steps"][kind][1][key], rel=1e-6, abs=1e-8)
    zero = got[0]
    assert zero["state_diff"] <= TOL  # full state, official names, after two steps
    assert zero["resumed_diff"] <= 1e-6
    plain = zero["plain_state"]
    assert any(".mlp.experts.0.gate_proj." in name for name in plain)
    assert _diff(got["received"], plain) <= TOL  # the streamed sync
    exported = KimiVLForConditionalGeneration.from_pretrained(tmp_path / "export", dtype=torch.float32)
    assert _diff(dict(exported.checkpoint_tensors()), plain) <= TOL  # transformers' layout on disk


def test_a_state_saved_with_other_expert_parallelism_is_refused_by_name(tmp_path):
    from learner.rank import STATE_DIR, learner_layout, learner_state_dir

    (tmp_path / STATE_DIR).mkdir()
    old = {"learner_ranks": 2, "zero_stage": 3}  # saved before learner.expert_parallel existed
    assert learner_layout(2, 3) == old  # off: the layout is as it was, so those states still load
    assert learner_state_dir(tmp_path, old, learner_layout(2, 3, 1)) == str(tmp_path)
    with pytest.raises(ValueError, match=r"learner.expert_parallel=1 \(this run: 2\)"):
        learner_state_dir(tmp_path, old, learner_layout(2, 3, 2))
    with pytest.raises(ValueError, match=r"learner.expert_parallel=2 \(this run: 1\)"):
        learner_state_dir(tmp_path, learner_layout(2, 3, 2), learner_layout(2, 3, 1))
