"""`kvrl plan`: the memory arithmetic against hand-worked numbers, the placement, and the A3B configs."""

from __future__ import annotations

import pytest

from actors.placement import ResourceConfig
from actors.plan import GIB, ModelShape, PlanError, learner_memory, model_shape, place_gpus, rollout_memory
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
)


def test_learner_memory_by_hand():
    m = learner_memory(
        SHAPE, ranks=4, zero_stage=3, dtype_bytes=2, tokens=1000, logits_chunk=500, checkpointing=True
    )
    assert m["parameters"] == 1e9 * 2 / 4 + 1e7 * 2  # a shard 5e8 + one gathered layer 2e7 = 5.2e8
    assert m["gradients"] == 1e9 * 2 / 4  # 5e8
    assert m["optimizer"] == 1e9 * 12 / 4  # m, v and the fp32 master copy: 3e9
    # layer inputs 10*1000*1000*2 = 2e7, one layer recomputed 1000*1000*34 = 3.4e7,
    # logits 500 positions * 10_000 * (2 + 12) = 7e7: 1.24e8 in all
    assert m["activations"] == 2e7 + 3.4e7 + 7e7

    z1 = learner_memory(
        SHAPE, ranks=4, zero_stage=1, dtype_bytes=2, tokens=1000, logits_chunk=0, checkpointing=False
    )
    assert z1["parameters"] == 2e9 and z1["gradients"] == 2e9  # not partitioned below ZeRO-3 / ZeRO-2
    assert z1["optimizer"] == 3e9
    # no checkpointing: 10 layers x 3.4e7; no chunking: all 1000 positions' logits, 1000*10_000*14 = 1.4e8
    assert z1["activations"] == 10 * 3.4e7 + 1.4e8

    fp32 = learner_memory(
        SHAPE, ranks=1, zero_stage=0, dtype_bytes=4, tokens=1, logits_chunk=1, checkpointing=True
    )
    assert fp32["optimizer"] == 8e9  # fp32 weights are their own master copy: m and v only

    muon = learner_memory(
        SHAPE,
        ranks=4,
        zero_stage=3,
        dtype_bytes=2,
        tokens=1000,
        logits_chunk=500,
        checkpointing=True,
        optimizer="muon",
    )
    # Muon: 8e8 params x 4 (momentum) = 3.2e9; AdamW: 2e8 x 8 = 1.6e9; master 1e9 x 4 = 4e9; / 4 ranks
    assert muon["optimizer"] == (3.2e9 + 1.6e9 + 4e9) / 4  # 2.2e9 against AdamW's 3e9


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
    for row in ("parameters", "gradients", "optimizer states", "activations", "KV cache", "total"):
        assert f"  {row}" in out, row
    if name == "rl-4x8":
        assert "node 1: learner ranks 8-15" in out and "node 3: rollout engines 4-7" in out
        assert "overlap: rollout and learners on separate nodes; off: trainer.max_staleness 0" in out
    else:  # 8 GPUs: 4 learner ranks and 2 engines x TP 2 on one node
        assert "overlap: rollout and learners on disjoint GPUs (1 node(s) hold both)" in out


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
        "resources.rollout_actors=4",
        "resources.learner_gpus=0.5",
        "resources.rollout_gpus=0.5",
        "rollout.tensor_parallel_size=1",
    ).stdout
    assert "overlap: none possible: engines and learner ranks share GPUs and take turns" in out, out


def test_a_plan_that_does_not_fit_says_what_and_exits_nonzero(kvrl_plan):
    proc = kvrl_plan(A3B / "rl-1x8.yaml", "plan.gpu_memory_gib=40")
    assert proc.returncode == 1
    assert "does not fit: a learner rank needs 73.0 GiB of 40" in proc.stdout
    assert proc.stdout.rstrip().endswith("DOES NOT FIT")

    proc = kvrl_plan(A3B / "rl-4x8.yaml", "plan.nodes=2")
    assert proc.returncode == 2 and "the config asks for 32 GPUs, the cluster has 2 x 8" in proc.stderr
