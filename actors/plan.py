"""``kvrl plan``: where each actor goes and how much memory each GPU and node needs, before a cluster is
booked. The arithmetic, term by term, is ``actors/plan_memory.py``; this module places the actors, fills
the formulas from a config and checks that every GPU keeps ``plan.min_margin`` of its memory free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from actors.plan_memory import (
    ADAM_STATE_BYTES,
    GIB,
    MUON_STATE_BYTES,
    HostSetup,
    Iteration,
    LearnerSetup,
    Links,
    ModelShape,
    PlanError,
    host_memory,
    kv_bytes_per_token,
    kv_capacity,
    learner_memory,
    learner_sync_bytes,
    learner_traffic,
    model_shape,
    optimizer_state_bytes,
    rollout_memory,
    sync_seconds,
)
from learner.distributed import ZERO_BUCKETS

__all__ = [
    "GIB",
    "ModelShape",
    "PlanConfig",
    "PlanError",
    "format_plan",
    "kv_bytes_per_token",
    "make_plan",
    "model_shape",
    "place_gpus",
]


@dataclass
class PlanConfig:
    """The cluster a config is planned for (``kvrl plan``); the run itself reads Ray's resources.
    Fields marked assumed are not measured (no GPU run yet): the plan prints them beside its figures."""

    nodes: int = 1
    gpus_per_node: int = 8
    gpu_memory_gib: float = 80.0
    overhead_gib: float = 3.0  # per GPU: CUDA context, NCCL buffers, fragmentation (assumed)
    model_config: str | None = None  # a config.json to plan from when `model` is not on this machine
    # the least share of each GPU's memory the plan leaves free (fragmentation, what it does not count)
    min_margin: float = 0.05
    images_per_sample: int = 1  # assumed, for the vision activations
    patches_per_image: int = 4096  # assumed: MoonViT patches of one image, before the 2x2 merge
    host_memory_gib: float = 2048.0  # host RAM per node
    learner_host_gib: float = 8.0  # assumed: a learner rank's process (torch, CUDA, DeepSpeed, Ray)
    engine_host_gib: float = 8.0  # assumed: one vLLM worker process (per engine GPU)
    # the weight sync estimate's links, GB/s (assumed)
    nvlink_gb_s: float = 150.0  # NCCL bus bandwidth within a node (H100 NVLink 4 peaks near 450)
    network_gb_s: float = 40.0  # between nodes, per GPU (400 Gb/s InfiniBand)
    pcie_gb_s: float = 20.0  # device <-> host
    host_copy_gb_s: float = 4.0  # one thread copying or pickling tensors in host memory
    unit_latency_ms: float = 0.1  # per broadcast call

    def __post_init__(self):
        if self.nodes < 1 or self.gpus_per_node < 1 or self.gpu_memory_gib <= 0:
            raise ValueError("nodes and gpus_per_node must be >= 1 and gpu_memory_gib > 0")
        if not 0 <= self.min_margin < 1:
            raise ValueError(f"min_margin must be in [0, 1), got {self.min_margin}")
        speeds = (self.nvlink_gb_s, self.network_gb_s, self.pcie_gb_s, self.host_copy_gb_s)
        if min(speeds) <= 0 or self.unit_latency_ms < 0:
            raise ValueError("the plan's link bandwidths must be > 0 and unit_latency_ms >= 0")

    def links(self) -> Links:
        return Links(
            self.nvlink_gb_s,
            self.network_gb_s,
            self.pcie_gb_s,
            self.host_copy_gb_s,
            self.unit_latency_ms / 1e3,
        )


@dataclass
class Plan:
    shape: ModelShape
    model_source: str
    nodes: list[list[str]]  # per node, what runs there
    learner: dict[str, float]  # bytes per learner GPU by kind
    rollout: dict[str, float]  # bytes per rollout GPU by kind
    gpu_bytes: float
    overhead: float
    colocate: bool
    kv_tokens: int  # tokens one engine's KV pool holds
    max_model_len: int
    max_num_seqs: int
    host: list[dict[str, float]] = field(default_factory=list)  # per node, host RAM by kind
    tp_compare: dict[int, tuple[int, int]] = field(default_factory=dict)  # TP -> (engines, KV tokens each)
    sync: dict[str, float] = field(default_factory=dict)  # estimated seconds by step
    sync_bytes: float = 0.0
    traffic: dict[int, dict[str, float]] = field(default_factory=dict)  # expert_parallel -> bytes by kind
    problems: list[str] = field(default_factory=list)  # what does not fit
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def learner_peak(self) -> float:
        """A learner GPU's peak: the sync and the activations are never held at once."""
        L = self.learner
        return (
            L["parameters"]
            + L["gradients"]
            + L["optimizer"]
            + max(L["activations"], L["weight sync"])
            + L["overhead"]
        )

    @property
    def rollout_peak(self) -> float:
        return sum(self.rollout.values())


def place_gpus(res, nodes: int, gpus_per_node: int) -> list[list[str]]:
    """A placement Ray can make: learner ranks packed first, then each engine's GPUs within one node."""
    free = [gpus_per_node] * nodes
    where: list[list[str]] = [[] for _ in range(nodes)]
    bundles = []
    if res.colocate:
        per = res.learner_gpus + res.rollout_gpus
        bundles += [(f"learner rank {i} + rollout engine {i}", per) for i in range(res.learner_ranks)]
    else:
        bundles += [(f"learner rank {i}", res.learner_gpus) for i in range(res.learner_ranks)]
        bundles += [(f"rollout engine {i}", res.rollout_gpus) for i in range(res.rollout_actors)]
    for name, gpus in bundles:
        node = next((n for n in range(nodes) if free[n] + 1e-9 >= gpus), None)
        if node is None:
            total = sum(g for _, g in bundles)
            raise PlanError(
                f"{name} needs {gpus:g} GPUs on one node and no node has them left: the config asks for "
                f"{total:g} GPUs, the cluster has {nodes} x {gpus_per_node}"
            )
        free[node] -= gpus
        where[node].append(name)
    return where


def _model_source(cfg, config_path) -> Path:
    pc = cfg.plan
    base = Path(config_path).parent if config_path else Path(".")
    candidates = [Path(cfg.model) / "config.json"] if cfg.model else []
    if pc.model_config:
        mc = Path(pc.model_config)
        candidates.append(mc if mc.is_absolute() or mc.exists() else base / mc)
    source = next((c for c in candidates if c.is_file()), None)
    if source is None:
        raise PlanError(
            f"no model config to plan from: model={cfg.model!r} has no config.json here and "
            f"plan.model_config={pc.model_config!r} does not exist"
        )
    return source


def make_plan(cfg, config_path: str | Path | None = None) -> Plan:
    """The plan of an RL config (``rl.trainer.RLConfig``) on the cluster its ``plan`` section names."""
    pc, res, lc, rc = cfg.plan, cfg.resources, cfg.learner, cfg.rollout
    source = _model_source(cfg, config_path)
    shape = model_shape(source)
    if res.learner_gpus <= 0 or res.rollout_gpus <= 0:
        raise PlanError(
            "resources.learner_gpus and resources.rollout_gpus must be > 0: kvrl plan sizes GPU clusters "
            "(this config runs on CPU)"
        )
    gpu, over = pc.gpu_memory_gib * GIB, pc.overhead_gib * GIB
    b = 4 if lc.dtype == "float32" else 2
    bucket = int(lc.sync_bucket_mb * 2**20)
    setup = LearnerSetup(
        ranks=res.learner_ranks,
        zero_stage=lc.zero_stage,
        dtype_bytes=b,
        tokens=lc.micro_batch_size * rc.max_model_len,
        logits_chunk=lc.logits_chunk,
        checkpointing=lc.gradient_checkpointing,
        optimizer=lc.optimizer,
        fp32_grad_accum=lc.fp32_grad_accum,
        reduce_bucket=ZERO_BUCKETS["reduce_bucket_size"],
        prefetch_bucket=ZERO_BUCKETS["stage3_prefetch_bucket_size"],
        patches=lc.micro_batch_size * pc.images_per_sample * pc.patches_per_image,
        expert_parallel=lc.expert_parallel,
    )
    learner = learner_memory(shape, setup)
    learner["weight sync"] = learner_sync_bytes(
        shape, path=rc.weight_sync, zero_stage=lc.zero_stage, dtype_bytes=b, bucket_bytes=bucket
    )
    learner["overhead"] = over
    tp = rc.tensor_parallel_size
    rollout = rollout_memory(
        shape, tp=tp, dtype_bytes=2, gpu_bytes=gpu, utilization=rc.gpu_memory_utilization, overhead=over
    )
    rollout["weight sync"] = bucket if rc.weight_sync == "stream" else 0.0
    rollout["overhead"] = over
    kv_tokens = max(0, int(rollout["kv_cache"] // kv_bytes_per_token(shape, 2)))
    nodes = place_gpus(res, pc.nodes, pc.gpus_per_node)
    plan = Plan(
        shape,
        str(source),
        nodes,
        learner,
        rollout,
        gpu,
        over,
        res.colocate,
        kv_tokens,
        rc.max_model_len,
        rc.max_num_seqs,
    )
    rollout_gpus = int(res.rollout_actors * res.rollout_gpus)
    plan.tp_compare = {
        t: kv_capacity(
            shape,
            gpus=rollout_gpus,
            tp=t,
            gpu_bytes=gpu,
            utilization=rc.gpu_memory_utilization,
            overhead=over,
        )
        for t in sorted({1, 2, tp})
        if t <= min(rollout_gpus, pc.gpus_per_node)
    }
    plan.host = [_node_host(shape, names, cfg, b) for names in nodes]
    plan.sync_bytes = shape.params * b
    plan.sync = _sync_estimate(plan, cfg, b, bucket)
    plan.traffic = _traffic(shape, setup, cfg)
    _check(plan, cfg)
    return plan


def _node_host(shape: ModelShape, names: list[str], cfg, b: int) -> dict[str, float]:
    pc, lc, rc = cfg.plan, cfg.learner, cfg.rollout
    learners = sum(1 for n in names if n.startswith("learner"))
    engines = sum(1 for n in names if "rollout engine" in n)
    setup = HostSetup(
        learner_ranks=learners,
        engines=engines,
        tp=rc.tensor_parallel_size,
        learner_host=pc.learner_host_gib * GIB,
        engine_host=pc.engine_host_gib * GIB,
        rank0=any(n.startswith("learner rank 0") for n in names),
    )
    return host_memory(
        shape,
        setup,
        path=rc.weight_sync,
        zero_stage=lc.zero_stage,
        ranks=cfg.resources.learner_ranks,
        dtype_bytes=b,
    )


def _sync_estimate(plan: Plan, cfg, b: int, bucket: int) -> dict[str, float]:
    home = next(i for i, names in enumerate(plan.nodes) if any(n.startswith("learner rank 0") for n in names))
    learner_nodes = [i for i, names in enumerate(plan.nodes) if any(n.startswith("learner") for n in names)]
    engine_nodes = [i for i, names in enumerate(plan.nodes) if any("rollout engine" in n for n in names)]
    return sync_seconds(
        plan.shape,
        cfg.plan.links(),
        path=cfg.rollout.weight_sync,
        dtype_bytes=b,
        ranks=cfg.resources.learner_ranks,
        zero_stage=cfg.learner.zero_stage,
        tp=cfg.rollout.tensor_parallel_size,
        units=math.ceil(plan.sync_bytes / bucket),
        learners_span_nodes=len(learner_nodes) > 1,
        engines_off_node=any(i != home for i in engine_nodes),
    )


def _traffic(shape: ModelShape, setup: LearnerSetup, cfg) -> dict[int, dict[str, float]]:
    """Per-rank learner traffic of an iteration at this config's expert parallelism and at the one it
    is compared with: none for a config with it, else the largest that divides the ranks and experts."""
    t, n = cfg.trainer, cfg.resources.learner_ranks
    per_rank = math.ceil(t.prompts_per_iteration * cfg.rollout.sampling.n / n)
    micro = math.ceil(per_rank / cfg.learner.micro_batch_size)
    it = Iteration(
        train_micro_batches=t.epochs_per_iteration * micro,
        forward_micro_batches=micro if t.old_logprobs == "learner" else 0,
        optimizer_steps=t.epochs_per_iteration * t.optimizer_steps_per_iteration,
    )
    e = cfg.learner.expert_parallel
    other = (
        1 if e > 1 else max((d for d in range(2, n + 1) if n % d == 0 and shape.experts % d == 0), default=0)
    )
    return {k: learner_traffic(shape, setup, it, k) for k in (e, other) if k}


def _check(plan: Plan, cfg) -> None:
    pc = cfg.plan
    gib, room = plan.gpu_bytes / GIB, plan.gpu_bytes * (1 - pc.min_margin)
    engine_total = plan.rollout_peak
    keep = f"keeping plan.min_margin={pc.min_margin:g} free"
    if plan.colocate:
        shared = plan.learner_peak + engine_total
        if shared > room:
            plan.problems.append(
                f"a colocated GPU needs {shared / GIB:.1f} GiB (learner {plan.learner_peak / GIB:.1f} + vLLM "
                f"{engine_total / GIB:.1f}) of {gib:g}, {keep}: lower rollout.gpu_memory_utilization or "
                "learner.micro_batch_size, or add learner ranks"
            )
    else:
        if plan.learner_peak > room:
            kinds = {k: v for k, v in plan.learner.items() if k != "overhead"}
            biggest = max(kinds, key=kinds.get)
            plan.problems.append(
                f"a learner rank needs {plan.learner_peak / GIB:.1f} GiB of {gib:g}, {keep} (largest: "
                f"{biggest} {plan.learner[biggest] / GIB:.1f} GiB): add learner ranks, use ZeRO-3, turn on "
                "learner.gradient_checkpointing, lower learner.micro_batch_size / learner.logits_chunk or "
                "use learner.optimizer=muon"
            )
        if engine_total > room:
            plan.problems.append(
                f"a rollout GPU needs {engine_total / GIB:.1f} GiB of {gib:g}, {keep}: lower "
                "rollout.gpu_memory_utilization"
            )
    for i, node in enumerate(plan.host):
        if sum(node.values()) > pc.host_memory_gib * GIB:
            plan.problems.append(
                f"node {i} needs {sum(node.values()) / GIB:.0f} GiB of host RAM of plan.host_memory_gib="
                f"{pc.host_memory_gib:g}"
            )
    if plan.rollout["kv_cache"] <= 0 or plan.kv_tokens < plan.max_model_len:
        plan.problems.append(
            f"a rollout engine's KV cache holds {plan.kv_tokens} tokens, less than one "
            f"rollout.max_model_len={plan.max_model_len} sequence: raise rollout.tensor_parallel_size "
            "or rollout.gpu_memory_utilization"
        )
    elif plan.kv_tokens < plan.max_model_len * plan.max_num_seqs:
        full = plan.kv_tokens // plan.max_model_len
        plan.notes.append(
            f"KV cache: {full} full-length sequences at once (rollout.max_num_seqs="
            f"{plan.max_num_seqs}); shorter responses share the rest, longer ones preempt and recompute"
        )


ROWS = [
    ("parameters", "parameters"),
    ("gradients", "gradients"),
    ("optimizer", "optimizer states"),
    ("activations", "activations"),
    ("weight sync", "weight sync"),
    ("kv_cache", "KV cache"),
    ("overhead", "overhead"),
]


def format_plan(plan: Plan, cfg, title: str) -> str:
    s, pc = plan.shape, cfg.plan
    lines = [
        f"kvrl plan: {title}",
        f"model ({plan.model_source}): {s.params / 1e9:.2f} B parameters "
        f"({s.active_params / 1e9:.2f} B of the language model active per token; vision tower + projector "
        f"{s.vision_params / 1e9:.2f} B), {s.layers} decoder layers, hidden {s.hidden}, vocab {s.vocab}",
        f"cluster: {pc.nodes} node(s) x {pc.gpus_per_node} GPUs x {pc.gpu_memory_gib:g} GiB, "
        f"{pc.host_memory_gib:g} GiB host RAM each",
        "placement:",
    ]
    lines += [f"  node {n}: {_ranges(names) or '(idle)'}" for n, names in enumerate(plan.nodes)]
    lines.append(overlap_line(plan, cfg))
    lc, rc = cfg.learner, cfg.rollout
    lines.append(
        f"learner: {cfg.resources.learner_ranks} ranks, ZeRO-{lc.zero_stage}, micro-batch "
        f"{lc.micro_batch_size} x {rc.max_model_len} tokens, gradient checkpointing "
        f"{'on' if lc.gradient_checkpointing else 'off'}, logits chunk {lc.logits_chunk or 'off'}, "
        f"gradients accumulated in {'fp32' if lc.fp32_grad_accum else 'the model dtype'}, "
        f"{pc.images_per_sample} image(s) of {pc.patches_per_image} patches a sample (assumed)"
    )
    lines.append(optimizer_line(plan, cfg))
    lines.append(
        f"rollout: {cfg.resources.rollout_actors} engines x TP {rc.tensor_parallel_size} (DP "
        f"{cfg.resources.rollout_actors}), gpu_memory_utilization {rc.gpu_memory_utilization:g}, "
        f"n = {rc.sampling.n} samples of up to {rc.sampling.max_tokens} tokens"
    )
    lines.append(f"per-GPU memory (GiB)   {'learner rank':>14} {'rollout engine':>15}")
    for kind, label in ROWS:
        lines.append(f"  {label:<20} {_gib(plan.learner.get(kind)):>14} {_gib(plan.rollout.get(kind)):>15}")
    lines.append(
        f"  {'peak':<20} {_gib(plan.learner_peak):>14} {_gib(plan.rollout_peak):>15}   of "
        f"{pc.gpu_memory_gib:g} (learner: the larger of activations and weight sync)"
    )
    margins = [1 - plan.learner_peak / plan.gpu_bytes, 1 - plan.rollout_peak / plan.gpu_bytes]
    lines.append(
        f"margin: learner {margins[0]:.1%}, rollout {margins[1]:.1%} of each GPU free "
        f"(plan.min_margin {pc.min_margin:.0%})"
    )
    lines.append(
        f"KV cache: {plan.kv_tokens} tokens per engine ({kv_bytes_per_token(s, 2) / 1024:.1f} KiB per token)"
    )
    lines.append(tp_line(plan, cfg))
    for n, node in enumerate(plan.host):
        parts = ", ".join(f"{k} {v / GIB:.0f}" for k, v in node.items() if v)
        lines.append(f"host RAM node {n}: {sum(node.values()) / GIB:.0f} GiB ({parts})")
    lines.append(sync_line(plan, cfg))
    lines.append(traffic_line(plan, cfg))
    lines += [f"note: {n}" for n in plan.notes]
    lines += [f"does not fit: {p}" for p in plan.problems]
    lines.append("fits" if plan.fits else "DOES NOT FIT")
    return "\n".join(lines)


def tp_line(plan: Plan, cfg) -> str:
    """MLA's KV capacity over the config's rollout GPUs at TP 1 and TP 2: the latent cache is whole on
    every TP rank, so TP 2 frees weight memory per GPU but holds one pool per two GPUs."""
    parts = [
        f"TP {t}: {engines} engines x {tokens} = {engines * tokens / 1e6:.2f} M tokens"
        for t, (engines, tokens) in plan.tp_compare.items()
    ]
    tp = cfg.rollout.tensor_parallel_size
    return f"KV capacity over the rollout GPUs: {'; '.join(parts)} (this config: TP {tp})"


def sync_line(plan: Plan, cfg) -> str:
    pc, est = cfg.plan, plan.sync
    steps = ", ".join(f"{k} {v:.2f}" for k, v in est.items() if k != "total" and v)
    return (
        f"weight sync: {cfg.rollout.weight_sync}, {plan.sync_bytes / 1e9:.1f} GB a sync, about "
        f"{est['total']:.1f} s estimated ({steps}); assumed links: NVLink {pc.nvlink_gb_s:g} GB/s, "
        f"network {pc.network_gb_s:g} GB/s, PCIe {pc.pcie_gb_s:g} GB/s, host copies "
        f"{pc.host_copy_gb_s:g} GB/s, {pc.unit_latency_ms:g} ms a broadcast"
    )


def traffic_line(plan: Plan, cfg) -> str:
    """The learner's per-rank traffic in an iteration, by kind, against the other expert parallelism."""
    lc, rc = cfg.learner, cfg.rollout

    def part(e: int) -> str:
        bytes_ = plan.traffic[e]
        kinds = ", ".join(f"{k} {v / 1e12:.1f}" for k, v in bytes_.items() if k != "total" and v)
        name = f"expert_parallel {e}" if e > 1 else "without expert parallelism"
        return f"{name}: {bytes_['total'] / 1e12:.1f} TB ({kinds})"

    e = lc.expert_parallel
    head = (
        f"learner traffic per rank per iteration (ZeRO-{lc.zero_stage}, micro-batches at the full "
        f"{rc.max_model_len} tokens, an upper bound for the all-to-all): {part(e)}"
    )
    others = [k for k in plan.traffic if k != e]
    if not others:
        n, E = cfg.resources.learner_ranks, plan.shape.experts
        why = f"no learner.expert_parallel > 1 divides {n} ranks and {E} experts" if E else "a dense model"
        return f"{head}; {why}"
    k = others[0]
    zero, ep = plan.traffic[1], plan.traffic[max(e, k)]
    ratio = zero["total"] / ep["total"]
    # the all-to-all grows with a micro-batch's tokens, the gathers do not: where EP breaks even, and
    # where it moves 5x less, in average tokens a micro-batch
    per_token = ep["all-to-all"] / rc.max_model_len / lc.micro_batch_size
    fixed = ep["total"] - ep["all-to-all"]
    even, fifth = ((zero["total"] / r - fixed) / per_token for r in (1, 5))
    return (
        f"{head}; {part(k)}; expert parallelism moves {ratio:.2f}x less at full length; less below "
        f"{max(even, 0) / 1e3:.1f}K tokens a micro-batch on average, 5x less below {max(fifth, 0) / 1e3:.1f}K"
    )


def overlap_line(plan: Plan, cfg) -> str:
    """Whether rollout and learning can run at once (pipelined RL, ``trainer.max_staleness``)."""
    staleness = cfg.trainer.max_staleness
    if plan.colocate:
        return (
            f"overlap: none possible: engines and learner ranks share GPUs and take turns "
            f"(trainer.max_staleness {staleness} samples ahead but cannot run both at once)"
        )
    shared = sum(
        1
        for names in plan.nodes
        if any(n.startswith("learner") for n in names) and any(n.startswith("rollout") for n in names)
    )
    where = "separate nodes" if not shared else f"disjoint GPUs ({shared} node(s) hold both)"
    state = (
        f"on: trainer.max_staleness {staleness}, the next batch samples while this one trains"
        if staleness
        else "off: trainer.max_staleness 0 (synchronous); 1 overlaps them"
    )
    return f"overlap: rollout and learners on {where}; {state}"


def optimizer_line(plan: Plan, cfg) -> str:
    """Which optimizer, and AdamW's and Muon's state per learner rank side by side (no master weights)."""
    s, lc = plan.shape, cfg.learner
    ranks = cfg.resources.learner_ranks if lc.zero_stage >= 1 else 1
    state = {name: optimizer_state_bytes(s, name) / ranks for name in ("adamw", "muon")}
    return (
        f"optimizer: {lc.optimizer}; states per rank {_gib(state['adamw'])} GiB with adamw, "
        f"{_gib(state['muon'])} GiB with muon (Muon takes {s.muon_params / 1e9:.2f} B of the parameters: "
        f"{_gib(s.muon_params * MUON_STATE_BYTES / ranks)} GiB of momentum where AdamW keeps "
        f"{_gib(s.muon_params * ADAM_STATE_BYTES / ranks)} GiB of moments)"
    )


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.1f}"


def _ranges(names: list[str]) -> str:
    """'learner rank 0', 'learner rank 1', ... -> 'learner ranks 0-1'; keeps other names as they are."""
    groups: dict[str, list[int]] = {}
    other = []
    for name in names:
        head, _, idx = name.rpartition(" ")
        if idx.isdigit() and "+" not in name:
            groups.setdefault(head, []).append(int(idx))
        else:
            other.append(name)
    parts = [
        f"{head}s {ids[0]}-{ids[-1]}" if len(ids) > 1 else f"{head} {ids[0]}" for head, ids in groups.items()
    ]
    return ", ".join(parts + other)
