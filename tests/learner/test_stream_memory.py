"""A streamed sync's extra learner memory on the 16x model (``kvrl bench sync``'s 16x size): at most the
largest module plus one bucket (over gloo, the module twice while it is gathered), as ``kvrl plan``'s
formula says, where gathering the whole model (the object-store path) takes all of it.

Two ZeRO-3 learner ranks and a receiver, each its own process (spawned: DeepSpeed and the stream group
need real processes), with glibc returning freed memory at once (``benchmarks.sync.EXACT_RSS_ENV``), so
each rank's peak RSS during the sync, less its RSS before, is what the sync holds.
"""

from __future__ import annotations

import multiprocessing

import pytest

from tests.helpers import as_learner_rank, free_port

BUCKET_MB = 4.0


def _rank(rank: int, model: str, master_port: int, out) -> None:
    as_learner_rank(rank, master_port)
    from actors.memory import peak_rss_mb, reset_peak_rss
    from learner.rank import Learner, LearnerConfig

    learner = Learner(model, LearnerConfig(zero_stage=3, sync_bucket_mb=BUCKET_MB), rank, 2)
    if rank == 0:
        out.put(("port", learner.stream_listen("127.0.0.1", 2, 120)))
        out.put(("plan", learner.stream_plan()))
        learner.stream_join("127.0.0.1", 2, "gloo", 120)
    learner.stream_send()  # warm-up: the first sync's one-off allocations (gloo's buffers)
    before = reset_peak_rss()
    learner.stream_send()
    stream = peak_rss_mb() - before
    before = reset_peak_rss()
    state = learner.full_state()  # the object-store path's gather (and rank 0's host copy)
    gathered = peak_rss_mb() - before
    del state
    out.put((rank, {"stream": stream, "gathered": gathered, "bounds": learner.sender.bounds()}))


def _receiver(port: int, plan: dict) -> None:
    import torch

    from kimivl.weight_stream import TensorSpec, join, unit_size, units

    stream = join("127.0.0.1", port, 1, 2, "gloo", 120)
    specs = [
        TensorSpec(*spec)
        for spec in zip(plan["names"], plan["dtype_names"], map(tuple, plan["shapes"]), strict=True)
    ]
    for _ in range(2):  # the warm-up sync, then the measured one
        for members in units(specs, plan["bucket_bytes"]):
            size, _ = unit_size([specs[i] for i in members], plan["bucket_bytes"])
            stream.broadcast(torch.empty(size, dtype=torch.uint8))


@pytest.mark.slow
def test_a_streamed_sync_holds_one_module_and_one_bucket_on_the_16x_model(tmp_path, monkeypatch):
    from actors.plan_memory import learner_sync_bytes, model_shape
    from benchmarks.sync import EXACT_RSS_ENV, SIZES
    from kimivl.tiny import make_tiny

    model = str(make_tiny(tmp_path / "16x", **SIZES["16x"]))
    for key, value in EXACT_RSS_ENV.items():
        monkeypatch.setenv(key, value)  # read by the spawned interpreters at start
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    ranks = [ctx.Process(target=_rank, args=(r, model, port, out)) for r in (0, 1)]
    for p in ranks:
        p.start()
    got = {}
    while "plan" not in got:
        key, value = out.get(timeout=300)
        got[key] = value
    receiver = ctx.Process(target=_receiver, args=(got["port"], got["plan"]))
    receiver.start()
    for _ in ranks:
        key, value = out.get(timeout=300)
        got[key] = value
    for p in (*ranks, receiver):
        p.join(60)
        assert p.exitcode == 0

    shape, mib = model_shape(model), 2**20
    bounds = got[0]["bounds"]
    # the stream sends the persistent buffers too (the routers' score biases, 144 bytes)
    assert bounds["model"] == pytest.approx(shape.params * 4, rel=1e-4)
    assert bounds["largest_module"] == shape.module_params * 4
    bucket = int(BUCKET_MB * mib)
    for rank in (0, 1):
        plan = learner_sync_bytes(
            shape, path="stream", zero_stage=3, dtype_bytes=4, bucket_bytes=bucket, rank=rank, gloo=True
        )
        measured = got[rank]["stream"] * mib
        # at most the plan's formula: the largest module gathered, held twice by gloo while it gathers,
        # and (rank 0) the bucket, 2 x 1.5 + 4 MiB, with 2 MiB for the interpreter's and gloo's own
        # allocations (on the 480 MB model kvrl bench sync finds the formula within 1%)
        assert measured <= plan + 2 * mib, (rank, measured / mib, plan / mib)
        # gathering the whole model at once, as the object-store path does, holds all of it on every rank
        assert got[rank]["gathered"] * mib >= 0.95 * bounds["model"] > 2 * measured
