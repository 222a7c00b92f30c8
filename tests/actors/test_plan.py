"""`kvrl plan`: the memory arithmetic against hand-worked numbers, the placement, and the A3B configs."""

from __future__ import annotations

import re

import pytest

from actors.placement import ResourceConfig
from actors.plan import GIB, ModelShape, PlanError, model_shape, place_gpus
from actors.plan_memory import (
    HostSetup,
    Iteration,
    LearnerSetup,
    Links,
    host_memory,
    kv_capacity,
    learner_memory,
    learner_sync_bytes,
    learner_traffic,
    rollout_memory,
    sync_seconds,
    train_flops_per_token,
)
from learner.optim import takes_muon
from tests.helpers import ROOT, kvrl_here

A3B = ROOT / "configs" / "kimi-vl-a3b"
SHAPE = ModelShape(
    params=10**9,
    active_params=0,
    vision_params=0,
    layers=10,
    hidden=1000,
    vocab=10_000,
    layer_params=10**7,
    kv_latent=576,
    muon_params=8 * 10**8,
    module_params=5 * 10**6,
    tensor_params=3 * 10**6,
    moe_layers=8,
    experts_per_token=2,
    moe_intermediate=500,
    vision_layers=4,
    vision_hidden=100,
)
DENSE = ModelShape(**{**SHAPE.__dict__, "moe_layers": 0, "experts_per_token": 0, "moe_intermediate": 0})


def setup(**kw) -> LearnerSetup:
    base = dict(ranks=4, zero_stage=3, dtype_bytes=2, tokens=1000, logits_chunk=500, checkpointing=True)
    return LearnerSetup(**{**base, **kw})


def test_learner_memory_by_hand():
    m = learner_memory(DENSE, setup())
    assert m["parameters"] == 1e9 * 2 / 4 + 1e7 * 2  # a shard 5e8 + one gathered layer 2e7 = 5.2e8
    assert m["gradients"] == 1e9 * 2 / 4 + 1e7 * 2  # 5e8 + the layer in backward, whole: 2e7
    assert m["optimizer"] == 1e9 * 12 / 4  # m, v and the fp32 master copy: 3e9
    # layer inputs 10*1000*1000*2 = 2e7, one layer recomputed 1000*1000*34 = 3.4e7,
    # logits 500 positions * 10_000 * (2 + 12) = 7e7: 1.24e8 in all
    assert m["activations"] == 2e7 + 3.4e7 + 7e7

    z1 = learner_memory(DENSE, setup(zero_stage=1, logits_chunk=0, checkpointing=False))
    assert z1["parameters"] == 2e9 and z1["gradients"] == 2e9  # not partitioned below ZeRO-3 / ZeRO-2
    assert z1["optimizer"] == 3e9
    # no checkpointing: 10 layers x 3.4e7; no chunking: all 1000 positions' logits, 1000*10_000*14 = 1.4e8
    assert z1["activations"] == 10 * 3.4e7 + 1.4e8

    fp32 = learner_memory(DENSE, setup(ranks=1, zero_stage=0, dtype_bytes=4, tokens=1, logits_chunk=1))
    assert fp32["optimizer"] == 8e9  # fp32 weights are their own master copy: m and v only

    muon = learner_memory(DENSE, setup(optimizer="muon"))
    # Muon: 8e8 params x 4 (momentum) = 3.2e9; AdamW: 2e8 x 8 = 1.6e9; master 1e9 x 4 = 4e9; / 4 ranks
    assert muon["optimizer"] == (3.2e9 + 1.6e9 + 4e9) / 4  # 2.2e9 against AdamW's 3e9


def test_the_new_learner_terms_by_hand():
    """fp32 gradient accumulation, ZeRO's buckets, MoE dispatch rows, vision activations, the sync."""
    m = learner_memory(
        SHAPE, setup(fp32_grad_accum=True, reduce_bucket=10**6, prefetch_bucket=2 * 10**6, patches=100)
    )
    # shard 5e8 + the layer gathered (1e7 x 2 = 2e7) + 2e6 elements prefetched (4e6) = 5.24e8
    assert m["parameters"] == 5e8 + 2e7 + 4e6
    # fp32: 1e9 x 4 / 4 = 1e9, + the reduce bucket 1e6 x 2 = 2e6, + the layer's whole gradient 2e7
    assert m["gradients"] == 1e9 + 2e6 + 2e7
    # decoder: inputs 2e7 + one layer 3.4e7 + routed rows 2 x 1000 x 2 x (2 x 1000 + 3 x 500) x 2 = 2.8e7;
    # logits 7e7; vision: 4 blocks' inputs 4 x 100 x 100 x 2 = 8e4 + one block 100 x 100 x 34 = 3.4e5
    assert m["activations"] == 2e7 + 3.4e7 + 2.8e7 + 7e7 + 8e4 + 3.4e5
    bare = learner_memory(SHAPE, setup(checkpointing=False, patches=100))
    # no checkpointing: 2 dense layers x 3.4e7 + 8 MoE layers x (3.4e7 + 2.8e7); vision 4 x 3.4e5
    assert bare["activations"] == 2 * 3.4e7 + 8 * 6.2e7 + 7e7 + 4 * 3.4e5
    assert learner_memory(SHAPE, setup(dtype_bytes=4, fp32_grad_accum=True))["gradients"] == 1e9 + 4e7

    bucket = 64 * 2**20
    sync = {
        (path, z, r): learner_sync_bytes(
            SHAPE, path=path, zero_stage=z, dtype_bytes=2, bucket_bytes=bucket, rank=r
        )
        for path in ("stream", "object_store")
        for z in (2, 3)
        for r in (0, 1)
    }
    assert sync["stream", 3, 0] == 5e6 * 2 + bucket  # the largest module gathered + one bucket
    assert sync["stream", 3, 1] == 1e7 and sync["stream", 2, 1] == 0 and sync["stream", 2, 0] == bucket
    assert sync["object_store", 3, 0] == sync["object_store", 3, 1] == 2e9  # the whole model gathered
    assert sync["object_store", 2, 0] == 0
    # CPU learners over gloo: what one all-gather brings twice while it runs (the stream: the largest
    # module, 1e7; the full gather: one tensor at a time, the largest 3e6 x 2 = 6e6); rank 0's
    # object-store copies in the same memory: the host copy, its pickled stream and the stored object
    cpu = dict(dtype_bytes=2, bucket_bytes=bucket, gloo=True, host_learner=True)
    assert learner_sync_bytes(SHAPE, path="stream", zero_stage=3, rank=1, **cpu) == 2e7
    assert learner_sync_bytes(SHAPE, path="stream", zero_stage=3, rank=0, **cpu) == 2e7 + bucket
    assert learner_sync_bytes(SHAPE, path="object_store", zero_stage=3, rank=1, **cpu) == 2e9 + 6e6
    assert learner_sync_bytes(SHAPE, path="object_store", zero_stage=3, rank=0, **cpu) == 3 * 2e9


def test_expert_parallel_memory_and_traffic_by_hand():
    """learner.expert_parallel: what a rank holds and gathers, and the bytes it receives an iteration."""
    moe = ModelShape(**{**SHAPE.__dict__, "routed_params": 4 * 10**7, "experts": 8})  # 5e6 a layer
    base, ep = learner_memory(moe, setup()), learner_memory(moe, setup(expert_parallel=4))
    # ZeRO-3: the same shard, but the layer it gathers has 5e6 / 4 of its experts: 1e7 - 5e6 + 1.25e6
    assert ep["parameters"] == 5e8 + 6.25e6 * 2 and base["parameters"] == 5e8 + 1e7 * 2
    assert ep["gradients"] == 5e8 + 6.25e6 * 2 and ep["optimizer"] == base["optimizer"]
    # the all-to-all's send and receive buffers: 2 x 1000 tokens x 2 experts x 1000 x 2 bytes
    assert ep["activations"] == base["activations"] + 8e6
    z2 = learner_memory(moe, setup(zero_stage=2, expert_parallel=4))
    assert z2["parameters"] == (1e9 - 4e7 + 1e7) * 2  # whole below ZeRO-3, but only its own experts

    it = Iteration(train_micro_batches=10, forward_micro_batches=5, optimizer_steps=2)
    zero3 = learner_traffic(moe, setup(), it, 1)
    # a gather brings 1e9 x 2 x 3/4 = 1.5e9; 3 passes x 10 + 5 forward-only = 35 of them; a reduce-scatter
    # of the same size each training micro-batch
    assert zero3 == {
        "parameter gathers": 35 * 1.5e9,
        "gradient reduction": 10 * 1.5e9,
        "all-to-all": 0.0,
        "total": 35 * 1.5e9 + 10 * 1.5e9,
    }
    e4 = learner_traffic(moe, setup(), it, 4)
    # the experts leave the gathers (each rank the only holder of its quarter): 9.6e8 x 2 x 3/4 = 1.44e9;
    # all-to-all: 2 ways x 8 layers x 1000 tokens x 2 experts x 1000 x 2 bytes x 3/4 = 4.8e7 a pass
    assert e4["parameter gathers"] == pytest.approx(35 * 1.44e9)
    assert e4["gradient reduction"] == pytest.approx(10 * 1.44e9)
    assert e4["all-to-all"] == pytest.approx(35 * 4.8e7)
    e2 = learner_traffic(moe, setup(), it, 2)
    # half the experts a rank, gathered from the one other rank holding them: + 2e7 x 2 x 1/2
    assert e2["parameter gathers"] == pytest.approx(35 * (1.44e9 + 2e7))
    z2 = learner_traffic(moe, setup(zero_stage=2), it, 1)
    assert z2["parameter gathers"] == 2 * 1.5e9  # the updated weights, once a step
    assert learner_traffic(moe, setup(zero_stage=1), it, 1)["gradient reduction"] == 2 * 2 * 1.5e9


def test_host_ram_tp_capacity_and_sync_time_by_hand():
    node = HostSetup(learner_ranks=2, engines=1, tp=2, learner_host=8 * GIB, engine_host=8 * GIB, rank0=True)
    kw = dict(zero_stage=3, ranks=4, dtype_bytes=2)
    stream = host_memory(SHAPE, node, path="stream", **kw)
    # each rank: 8 GiB + its load under zero.Init, 2e9 / 4 + one layer 2e7; the engine: 2 workers x 8 GiB
    assert stream == {
        "learner processes": 2 * (8 * GIB + 5.2e8),
        "engine processes": 16 * GIB,
        "checkpoint page cache": 2e9,
        "weight sync": 0.0,
    }
    # rank 0's host copy, pickled stream and stored object (3 x 2e9) + the engine's copy and one per
    # worker (3 x 2e9)
    assert host_memory(SHAPE, node, path="object_store", **kw)["weight sync"] == 1.2e10
    assert host_memory(SHAPE, node, path="stream", **{**kw, "zero_stage": 2})["learner processes"] == 2 * (
        8 * GIB + 2e9
    )  # no zero.Init below ZeRO-3: every rank loads the whole model

    # MLA's latent cache is whole on each TP rank: 11_520 bytes a token (10 layers x 576 x 2)
    gpu = dict(gpu_bytes=80 * GIB, utilization=0.9, overhead=3 * GIB)
    assert kv_capacity(SHAPE, gpus=4, tp=1, **gpu) == (4, int((69 * GIB - 2e9) // 11_520))
    assert kv_capacity(SHAPE, gpus=4, tp=2, **gpu) == (2, int((69 * GIB - 1e9) // 11_520))

    links = Links(nvlink=100, network=10, pcie=20, host_copy=4, unit_latency_s=1e-3)
    kw = dict(dtype_bytes=2, ranks=4, zero_stage=3, tp=2, units=10, learners_span_nodes=False)
    s = sync_seconds(SHAPE, links, path="stream", engines_off_node=False, **kw)
    # 2 GB: gather 2 x 3/4 / 100 = 0.015, broadcast 2 / 100 = 0.02, 10 units x 1 ms = 0.01
    assert s["total"] == pytest.approx(0.045)
    o = sync_seconds(SHAPE, links, path="object_store", engines_off_node=True, **kw)
    # gather 0.015, to host 2/20 = 0.1, pickle 2/4 = 0.5, network 2/10 = 0.2, engine (1 + 2) x 2/4 = 1.5,
    # to the GPUs 2/2/20 = 0.05
    assert o["total"] == pytest.approx(2.365)


def test_training_flops_by_hand():
    m = ModelShape(
        **{**SHAPE.__dict__, "active_params": 3 * 10**8, "heads": 4, "qk_head_dim": 48, "v_head_dim": 32}
    )
    # matrices: 3e8 active - the embedding (1e4 x 1e3 = 1e7) = 2.9e8, x 6 = 1.74e9; attention: 6 x 10
    # layers x 4 heads x (48 + 32) x 500 keys = 9.6e6
    assert train_flops_per_token(m, 500) == 1.74e9 + 9.6e6
    assert train_flops_per_token(m, 500, head=False) == 1.74e9 + 9.6e6 - 6e7  # the LM head, 6 x 1e7


def test_rollout_memory_by_hand():
    m = rollout_memory(SHAPE, tp=2, dtype_bytes=2, gpu_bytes=80 * GIB, utilization=0.9, overhead=3 * GIB)
    assert m["parameters"] == 1e9  # 1e9 params * 2 bytes / TP 2
    assert m["kv_cache"] == pytest.approx(0.9 * 80 * GIB - 1e9 - 3 * GIB)  # 69 GiB - 1e9 = 7.3088e10 bytes


def test_parameter_count_matches_the_real_model(tiny_dir):
    from kimivl import KimiVLForConditionalGeneration

    model = KimiVLForConditionalGeneration.from_pretrained(tiny_dir)
    shape = model_shape(tiny_dir)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.kv_latent == 576 and shape.layers == 2

    a3b = model_shape(A3B / "model_config.json")
    # Kimi-VL-A3B: 16.4 B parameters, about 3 B active in the language model (the report's "A3B")
    assert 16.3e9 < a3b.params < 16.5e9 and 2.7e9 < a3b.active_params < 3.1e9
    assert (a3b.layers, a3b.hidden, a3b.vocab) == (27, 2048, 163840)
    # Muon takes all but the embeddings, the LM head, norms and biases: 16.4 B - 2 x 0.34 B (embedding
    # and head, 163840 x 2048 each) - the vision tower's patch and position embeddings and the vectors
    assert 15.5e9 < a3b.muon_params < a3b.params - 2 * 163840 * 2048
    assert shape.muon_params == sum(
        p.numel() for name, p in model.named_parameters() if takes_muon(name, p.shape)
    )


def test_engines_never_straddle_nodes():
    res = ResourceConfig(learner_ranks=3, rollout_actors=1, learner_gpus=1, rollout_gpus=2)
    assert place_gpus(res, nodes=2, gpus_per_node=3) == [
        ["learner rank 0", "learner rank 1", "learner rank 2"],
        ["rollout engine 0"],
    ]
    res = ResourceConfig(learner_ranks=3, rollout_actors=2, learner_gpus=1, rollout_gpus=2)
    with pytest.raises(PlanError, match="rollout engine 1 needs 2 GPUs on one node"):
        place_gpus(res, nodes=2, gpus_per_node=3)  # 7 GPUs asked, 6 there, and no node has 2 left


@pytest.fixture
def kvrl_plan(capsys):
    return lambda config, *overrides: kvrl_here("plan", "--config", str(config), *overrides, capsys=capsys)


@pytest.mark.parametrize("name", ["rl-1x8", "rl-4x8"])
def test_a3b_configs_fit_their_clusters(name, kvrl_plan):
    proc = kvrl_plan(A3B / f"{name}.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.rstrip().endswith("fits") and "16.41 B parameters" in out
    for row in (
        "parameters",
        "gradients",
        "optimizer states",
        "activations",
        "weight sync",
        "KV cache",
        "peak",
    ):
        assert f"  {row}" in out, row
    # every GPU keeps at least 5% free, every node's host RAM stays under 1 TB (half of a 2 TB node)
    learner, rollout = map(float, re.search(r"margin: learner ([-\d.]+)%, rollout ([-\d.]+)%", out).groups())
    assert learner >= 5 and rollout >= 5, out
    hosts = [float(x) for x in re.findall(r"host RAM node \d+: (\d+) GiB", out)]
    assert hosts and max(hosts) <= 1024
    # MLA: TP 1 holds more KV tokens than TP 2 over the same GPUs, and the configs chose it
    tp = re.search(r"TP 1: .* = ([\d.]+) M tokens; TP 2: .* = ([\d.]+) M tokens \(this config: TP 1\)", out)
    assert tp and float(tp[1]) > float(tp[2])
    seconds = float(re.search(r"weight sync: stream, 32.8 GB a sync, about ([\d.]+) s estimated", out)[1])
    assert "assumed links: NVLink 150 GB/s" in out
    if name == "rl-4x8":
        assert "node 1: learner ranks 8-15" in out and "node 3: rollout engines 8-15" in out
        assert "overlap: rollout and learners on separate nodes; off: trainer.max_staleness 0" in out
    else:  # 8 GPUs: 5 learner ranks and 3 engines x TP 1 on one node; the sync within 10 s over NVLink
        assert "overlap: rollout and learners on disjoint GPUs (1 node(s) hold both)" in out
        assert seconds <= 10


def test_the_plan_weighs_expert_parallelism_against_zero3_gathers(kvrl_plan):
    out = kvrl_plan(A3B / "rl-1x8.yaml").stdout
    # 5 ranks: no expert parallelism divides them and 64 experts; ZeRO-3's gathers are ~30 TB a rank
    assert "no learner.expert_parallel > 1 divides 5 ranks and 64 experts" in out
    total = float(re.search(r"without expert parallelism: ([\d.]+) TB", out)[1])
    assert 25 <= total <= 35
    out = kvrl_plan(A3B / "rl-1x8.yaml", "resources.learner_ranks=4", "learner.expert_parallel=4").stdout
    line = next(x for x in out.splitlines() if x.startswith("learner traffic"))
    assert "expert_parallel 4: " in line and "all-to-all" in line and "without expert parallelism" in line
    assert re.search(r"5x less below [\d.]+K", line)
    bad = kvrl_plan(A3B / "rl-1x8.yaml", "learner.expert_parallel=2")
    assert bad.returncode != 0 and "learner.expert_parallel=2 must divide resources.learner_ranks=5" in (
        bad.stdout + bad.stderr
    )


def test_the_plan_keeps_its_margin_and_counts_the_old_sync_path(kvrl_plan):
    """4 learner ranks no longer fit one node once fp32 accumulation and the buckets are counted; the
    object-store sync gathers the whole model on every rank and copies it through host RAM."""
    out = kvrl_plan(A3B / "rl-1x8.yaml", "resources.learner_ranks=4", "resources.rollout_actors=4").stdout
    assert "does not fit: a learner rank needs 87.0 GiB of 80, keeping plan.min_margin=0.05 free" in out
    # a plan 1.6 GiB under the GPU still fails the margin: 73.2 GiB of 74.8 leaves 2%
    proc = kvrl_plan(A3B / "rl-1x8.yaml", "plan.gpu_memory_gib=74.8")
    assert proc.returncode == 1 and "a learner rank needs 73.2 GiB of 74.8" in proc.stdout
    assert kvrl_plan(A3B / "rl-1x8.yaml", "plan.gpu_memory_gib=74.8", "plan.min_margin=0").returncode == 0
    out = kvrl_plan(A3B / "rl-1x8.yaml", "rollout.weight_sync=object_store").stdout
    assert "  weight sync                    30.6" in out  # 16.41e9 x 2 bytes gathered
    seconds = float(re.search(r"weight sync: object_store, 32.8 GB a sync, about ([\d.]+) s", out)[1])
    assert 20 < seconds < 60  # host copies at 4 GB/s: pickling 8.2 s, 3 engines' copies 16.4 s, ...
    # rank 0's host copy, pickled stream and stored object (3 x 30.6 GiB) + 3 engines x (their copy +
    # their 1 worker's)
    assert re.search(r"host RAM node 0: \d+ GiB \(.*weight sync 275\)", out), out


def test_the_plan_prints_muons_optimizer_state_beside_adamws(kvrl_plan):
    rows = {}
    for name in ("adamw", "muon"):
        out = kvrl_plan(A3B / "rl-4x8.yaml", f"learner.optimizer={name}").stdout
        line = next(x for x in out.splitlines() if x.startswith("optimizer: "))
        # 16 ranks: AdamW 16.41e9 x 8 / 16 = 7.6 GiB; Muon 15.73e9 x 4 + 0.68e9 x 8 over 16 = 4.0 GiB
        assert line.startswith(f"optimizer: {name}; states per rank 7.6 GiB with adamw, 4.0 GiB with muon")
        assert "Muon takes 15.73 B of the parameters: 3.7 GiB of momentum where AdamW keeps 7.3 GiB" in line
        rows[name] = float(next(x for x in out.splitlines() if "optimizer states" in x).split()[2])
    # the row adds the bf16 run's fp32 master weights (16.41e9 x 4 / 16 = 3.8 GiB) to both
    assert rows == {"adamw": pytest.approx(7.6 + 3.8, abs=0.11), "muon": pytest.approx(4.0 + 3.8, abs=0.11)}


def test_the_plan_says_whether_rollout_and_learning_can_overlap(kvrl_plan):
    out = kvrl_plan(A3B / "rl-4x8.yaml", "trainer.max_staleness=1").stdout
    assert "overlap: rollout and learners on separate nodes; on: trainer.max_staleness 1" in out
    out = kvrl_plan(
        A3B / "rl-1x8.yaml",
        "resources.colocate=true",
        "resources.rollout_actors=5",
        "resources.learner_gpus=0.5",
        "resources.rollout_gpus=0.5",
        "rollout.tensor_parallel_size=1",
    ).stdout
    assert "overlap: none possible: engines and learner ranks share GPUs and take turns" in out, out


def test_a_plan_that_does_not_fit_says_what_and_exits_nonzero(kvrl_plan):
    proc = kvrl_plan(A3B / "rl-1x8.yaml", "plan.gpu_memory_gib=40")
    assert proc.returncode == 1
    assert "does not fit: a learner rank needs 73.2 GiB of 40" in proc.stdout
    assert proc.stdout.rstrip().endswith("DOES NOT FIT")

    proc = kvrl_plan(A3B / "rl-4x8.yaml", "plan.nodes=2")
    assert proc.returncode == 2 and "the config asks for 32 GPUs, the cluster has 2 x 8" in proc.stderr
