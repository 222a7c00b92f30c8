"""``kvrl plan``: where each actor goes and how much memory each GPU needs, before a cluster is booked.

The arithmetic (bytes; P parameters, b bytes per weight: 2 in bf16, G the GPU's memory):

Per learner GPU, ZeRO stage z over N ranks:
  parameters   P·b/N + W·b (z = 3: a shard, plus one decoder layer of W parameters gathered to run it);
               P·b otherwise
  gradients    P·b/N when z >= 2, else P·b
  optimizer    AdamW: 8 bytes a parameter (m and v in fp32); Muon (learner.optimizer: muon): 4 (one
               fp32 momentum) for the M parameters it takes (learner/optim.py), 8 for the rest; plus 4
               (an fp32 master copy) a parameter when b < 4. Over N ranks when z >= 1.
  activations  one micro-batch of S = micro_batch_size x max_model_len tokens:
               decoder: L·S·h·b with gradient checkpointing (each layer's input), plus one layer's internals
               being recomputed, S·h·34·b/2 (Korthikanti et al. 2022, "Reducing Activation Recomputation",
               eq. 2 with flash attention, so no attention-score term; MoE layers counted as dense ones);
               without checkpointing, L layers' internals.
               logits: C·V·(b + 12), C = min(S, learner.logits_chunk) positions at a time: their logits,
               the fp32 copy, its log-softmax and the gradient.
  overhead     plan.overhead_gib: CUDA context, NCCL buffers, allocator fragmentation.

Per rollout GPU (a vLLM engine over t = rollout.tensor_parallel_size GPUs; vLLM takes u =
rollout.gpu_memory_utilization of each):
  parameters   P·b/t
  KV cache     u·G - P·b/t - overhead: the pool. MLA caches one latent per token and layer, replicated on
               each TP rank: L·(kv_lora_rank + qk_rope_head_dim)·b bytes per token. The pool must hold one
               max_model_len sequence (vLLM refuses to start otherwise); below max_num_seqs of them, vLLM
               preempts and recomputes.

Colocated (resources.colocate), a GPU holds a learner rank and u·G for its engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kimivl import KimiVLConfig, KimiVLForConditionalGeneration
from learner.optim import takes_muon

GIB = 1024**3
ADAM_STATE_BYTES = 8  # exp_avg and exp_avg_sq in fp32
MUON_STATE_BYTES = 4  # momentum_buffer in fp32
MASTER_BYTES = 4  # fp32 master weights, kept when training in 16 bits
LAYER_ACTIVATION_FACTOR = 34  # bytes per token per hidden unit per layer in 16 bits (Korthikanti eq. 2)
LOGIT_WORK_BYTES = 12  # per logit beyond the model dtype: fp32 copy, log-softmax, gradient


class PlanError(ValueError):
    """The plan cannot be made (a missing model config, a cluster too small); the message says why."""


@dataclass
class PlanConfig:
    """The cluster a config is planned for (``kvrl plan``); the run itself reads Ray's resources."""

    nodes: int = 1
    gpus_per_node: int = 8
    gpu_memory_gib: float = 80.0
    overhead_gib: float = 3.0  # per GPU: CUDA context, NCCL buffers, fragmentation
    model_config: str | None = None  # a config.json to plan from when `model` is not on this machine

    def __post_init__(self):
        if self.nodes < 1 or self.gpus_per_node < 1 or self.gpu_memory_gib <= 0:
            raise ValueError("nodes and gpus_per_node must be >= 1 and gpu_memory_gib > 0")


@dataclass
class ModelShape:
    params: int
    active_params: int  # language model, per token: routed experts at num_experts_per_tok / n_routed_experts
    vision_params: int
    layers: int
    hidden: int
    vocab: int
    layer_params: int  # the largest decoder layer
    kv_latent: int  # kv_lora_rank + qk_rope_head_dim: MLA's cached width per token and layer
    muon_params: int = 0  # those Muon takes with learner.optimizer: muon (learner/optim.py takes_muon)


def model_shape(path: str | Path) -> ModelShape:
    """Count a Kimi-VL config's parameters exactly, on the meta device (no memory, no weights)."""
    import torch

    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise PlanError(f"model config {str(file)!r} does not exist")
    try:
        config = KimiVLConfig.from_dict(json.loads(file.read_text()))
    except (ValueError, TypeError) as e:
        raise PlanError(f"model config {str(file)!r}: {e}") from e
    with torch.device("meta"):
        model = KimiVLForConditionalGeneration(config)
    text = config.text_config
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    total = sum(sizes.values())
    routed = sum(n for name, n in sizes.items() if ".mlp.experts." in name)
    vision = sum(n for name, n in sizes.items() if not name.startswith("language_model."))
    active = total - vision - routed + routed * text.num_experts_per_tok // max(text.n_routed_experts, 1)
    layer = max(sum(p.numel() for p in m.parameters()) for m in model.language_model.model.layers)
    return ModelShape(
        params=total,
        active_params=active,
        vision_params=vision,
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        vocab=text.vocab_size,
        layer_params=layer,
        kv_latent=text.kv_lora_rank + text.qk_rope_head_dim,
        muon_params=sum(p.numel() for name, p in model.named_parameters() if takes_muon(name, p.shape)),
    )


def learner_memory(
    m: ModelShape,
    *,
    ranks: int,
    zero_stage: int,
    dtype_bytes: int,
    tokens: int,
    logits_chunk: int,
    checkpointing: bool,
    optimizer: str = "adamw",
) -> dict[str, float]:
    """Bytes per learner GPU by kind (see the module docstring for each formula)."""
    P, b = m.params, dtype_bytes
    params = P * b / ranks + m.layer_params * b if zero_stage == 3 else P * b
    grads = P * b / ranks if zero_stage >= 2 else P * b
    state = optimizer_state_bytes(m, optimizer) + (MASTER_BYTES * P if b < 4 else 0)
    states = state / ranks if zero_stage >= 1 else state
    one_layer = tokens * m.hidden * LAYER_ACTIVATION_FACTOR * b / 2
    decoder = m.layers * tokens * m.hidden * b + one_layer if checkpointing else m.layers * one_layer
    chunk = min(tokens, logits_chunk) if logits_chunk > 0 else tokens
    logits = chunk * m.vocab * (b + LOGIT_WORK_BYTES)
    return {"parameters": params, "gradients": grads, "optimizer": states, "activations": decoder + logits}


def optimizer_state_bytes(m: ModelShape, optimizer: str) -> float:
    """The optimizer's own state for the whole model (no master weights): AdamW's two moments, or Muon's
    one momentum for the matrices it takes and AdamW's two for the rest."""
    muon = m.muon_params if optimizer == "muon" else 0
    return muon * MUON_STATE_BYTES + (m.params - muon) * ADAM_STATE_BYTES


def rollout_memory(
    m: ModelShape, *, tp: int, dtype_bytes: int, gpu_bytes: float, utilization: float, overhead: float
) -> dict[str, float]:
    """Bytes per rollout GPU: the engine's weight shard, and the KV-cache pool vLLM makes of the rest."""
    weights = m.params * dtype_bytes / tp
    return {"parameters": weights, "kv_cache": utilization * gpu_bytes - weights - overhead}


def kv_bytes_per_token(m: ModelShape, dtype_bytes: int) -> int:
    return m.layers * m.kv_latent * dtype_bytes


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
    problems: list[str] = field(default_factory=list)  # what does not fit
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems


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


def make_plan(cfg, config_path: str | Path | None = None) -> Plan:
    """The plan of an RL config (``rl.trainer.RLConfig``) on the cluster its ``plan`` section names."""
    pc, res, lc, rc = cfg.plan, cfg.resources, cfg.learner, cfg.rollout
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
    shape = model_shape(source)
    if res.learner_gpus <= 0 or res.rollout_gpus <= 0:
        raise PlanError(
            "resources.learner_gpus and resources.rollout_gpus must be > 0: kvrl plan sizes GPU clusters "
            "(this config runs on CPU)"
        )
    gpu, over = pc.gpu_memory_gib * GIB, pc.overhead_gib * GIB
    b = 4 if lc.dtype == "float32" else 2
    learner = learner_memory(
        shape,
        ranks=res.learner_ranks,
        zero_stage=lc.zero_stage,
        dtype_bytes=b,
        tokens=lc.micro_batch_size * rc.max_model_len,
        logits_chunk=lc.logits_chunk,
        checkpointing=lc.gradient_checkpointing,
        optimizer=lc.optimizer,
    )
    learner["overhead"] = over
    rollout = rollout_memory(
        shape,
        tp=rc.tensor_parallel_size,
        dtype_bytes=2,
        gpu_bytes=gpu,
        utilization=rc.gpu_memory_utilization,
        overhead=over,
    )
    rollout["overhead"] = over
    kv_tokens = max(0, int(rollout["kv_cache"] // kv_bytes_per_token(shape, 2)))
    plan = Plan(
        shape,
        str(source),
        place_gpus(res, pc.nodes, pc.gpus_per_node),
        learner,
        rollout,
        gpu,
        over,
        res.colocate,
        kv_tokens,
        rc.max_model_len,
        rc.max_num_seqs,
    )
    _check(plan, cfg)
    return plan


def _check(plan: Plan, cfg) -> None:
    gib = plan.gpu_bytes / GIB
    learner_total = sum(plan.learner.values())
    engine_total = cfg.rollout.gpu_memory_utilization * plan.gpu_bytes
    if plan.colocate:
        shared = learner_total + engine_total
        if shared > plan.gpu_bytes:
            plan.problems.append(
                f"a colocated GPU needs {shared / GIB:.1f} GiB (learner {learner_total / GIB:.1f} + vLLM "
                f"{engine_total / GIB:.1f}) of {gib:g}: lower rollout.gpu_memory_utilization or "
                "learner.micro_batch_size, or add learner ranks"
            )
    elif learner_total > plan.gpu_bytes:
        biggest = max(plan.learner, key=plan.learner.get)
        plan.problems.append(
            f"a learner rank needs {learner_total / GIB:.1f} GiB of {gib:g} (largest: {biggest} "
            f"{plan.learner[biggest] / GIB:.1f} GiB): add learner ranks, use ZeRO-3, turn on "
            "learner.gradient_checkpointing or lower learner.micro_batch_size / learner.logits_chunk"
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


def format_plan(plan: Plan, cfg, title: str) -> str:
    s, pc = plan.shape, cfg.plan
    lines = [
        f"kvrl plan: {title}",
        f"model ({plan.model_source}): {s.params / 1e9:.2f} B parameters "
        f"({s.active_params / 1e9:.2f} B of the language model active per token; vision tower + projector "
        f"{s.vision_params / 1e9:.2f} B), {s.layers} decoder layers, hidden {s.hidden}, vocab {s.vocab}",
        f"cluster: {pc.nodes} node(s) x {pc.gpus_per_node} GPUs x {pc.gpu_memory_gib:g} GiB",
        "placement:",
    ]
    lines += [f"  node {n}: {_ranges(names) or '(idle)'}" for n, names in enumerate(plan.nodes)]
    lines.append(overlap_line(plan, cfg))
    lc, rc = cfg.learner, cfg.rollout
    lines.append(
        f"learner: {cfg.resources.learner_ranks} ranks, ZeRO-{lc.zero_stage}, micro-batch "
        f"{lc.micro_batch_size} x {rc.max_model_len} tokens, gradient checkpointing "
        f"{'on' if lc.gradient_checkpointing else 'off'}, logits chunk {lc.logits_chunk or 'off'}"
    )
    lines.append(optimizer_line(plan, cfg))
    lines.append(
        f"rollout: {cfg.resources.rollout_actors} engines x TP {rc.tensor_parallel_size} (DP "
        f"{cfg.resources.rollout_actors}), gpu_memory_utilization {rc.gpu_memory_utilization:g}, "
        f"n = {rc.sampling.n} samples of up to {rc.sampling.max_tokens} tokens"
    )
    lines.append(f"per-GPU memory (GiB)   {'learner rank':>14} {'rollout engine':>15}")
    for kind, label in [
        ("parameters", "parameters"),
        ("gradients", "gradients"),
        ("optimizer", "optimizer states"),
        ("activations", "activations"),
        ("kv_cache", "KV cache"),
        ("overhead", "overhead"),
    ]:
        lv = plan.learner.get(kind)
        rv = plan.rollout.get(kind)
        lines.append(f"  {label:<20} {_gib(lv):>14} {_gib(rv):>15}")
    learner_total = sum(plan.learner.values())
    engine_total = sum(plan.rollout.values())
    lines.append(
        f"  {'total':<20} {_gib(learner_total):>14} {_gib(engine_total):>15}   of {pc.gpu_memory_gib:g}"
    )
    lines.append(
        f"KV cache: {plan.kv_tokens} tokens per engine ({kv_bytes_per_token(s, 2) / 1024:.1f} KiB per token)"
    )
    lines += [f"note: {n}" for n in plan.notes]
    lines += [f"does not fit: {p}" for p in plan.problems]
    lines.append("fits" if plan.fits else "DOES NOT FIT")
    return "\n".join(lines)


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
