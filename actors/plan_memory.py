"""The memory arithmetic of ``kvrl plan`` (``actors/plan.py``): bytes per learner GPU, per rollout GPU,
during a weight sync, and of host RAM per node. Every term is a formula of the model's shape and the
config; the quantities no config says are ``PlanConfig`` fields marked *assumed*.

P parameters, b bytes per weight (2 in bf16), N learner ranks at ZeRO stage z, S = micro_batch_size x
max_model_len tokens per micro-batch, W the largest decoder layer's parameters, M the largest module's
own parameters (what the streamed sync gathers at once: an MoE layer's experts), L layers of width h.

Per learner GPU:
  parameters   z = 3: P·b/N, plus the layer being run, gathered (W·b), plus what ZeRO-3 fetches ahead
               of it (at most stage3_prefetch_bucket_size elements, ``learner.distributed.ZERO_BUCKETS``);
               z < 3: P·b
  gradients    P·g/N when z >= 2 (else P·g); g = 4 with fp32 accumulation of a 16-bit model
               (``learner.fp32_grad_accum``), else b. Plus, z >= 1, the reduce bucket (reduce_bucket_size
               elements of b bytes) and the layer whose backward runs, whose gradients are whole until
               reduced (W·b)
  optimizer    AdamW: 8 bytes a parameter (m and v in fp32); Muon: 4 (one momentum) for the M_muon
               parameters it takes (``learner/optim.py``), 8 for the rest; plus 4 (an fp32 master copy) a
               parameter when b < 4. Over N ranks when z >= 1
  activations  decoder: L·S·h·b with gradient checkpointing (each layer's input), plus one layer's
               internals recomputed, S·h·34·b/2 (Korthikanti et al. 2022, "Reducing Activation
               Recomputation", eq. 2 with flash attention; it covers attention and the shared experts),
               plus in an MoE layer the routed rows: S·k of them for top-k routing, each with its input
               and output (2h) and its expert's gate, up and activation (3I), kept in forward and again
               as gradients in backward: 2·S·k·(2h + 3I)·b. Without checkpointing, L layers' internals.
               logits: C·V·(b + 12), C = min(S, learner.logits_chunk) positions at a time: their logits,
               the fp32 copy, its log-softmax and the gradient.
               vision: X patches per micro-batch (plan.images_per_sample x plan.patches_per_image x
               micro_batch_size, assumed) through Lv MoonViT blocks of width hv: Lv·X·hv·b plus one
               block's internals X·hv·34·b/2 with checkpointing (the blocks checkpoint with the model),
               Lv blocks' internals without
  weight sync  during a sync, not at once with the activations (it runs after the step):
               stream (rollout.weight_sync): rank 0 holds M·b gathered plus one bucket
               (learner.sync_bucket_mb), the other ranks M·b; object_store: every rank gathers the
               whole model, P·b (z = 3; below ZeRO-3 it is whole already)
  overhead     plan.overhead_gib: CUDA context, NCCL buffers, allocator fragmentation
  A GPU needs parameters + gradients + optimizer + max(activations, weight sync) + overhead.

Per rollout GPU (a vLLM engine over t = rollout.tensor_parallel_size GPUs; vLLM takes u =
rollout.gpu_memory_utilization of each):
  parameters   P·b/t
  KV cache     u·G - P·b/t - overhead: the pool. MLA caches one latent per token and layer, replicated on
               each TP rank: L·(kv_lora_rank + qk_rope_head_dim)·b bytes per token. So TP 2 holds half
               the weights per GPU but no more tokens per GPU than its pool: ``kv_capacity`` compares TP
               1 and 2 over the same GPUs
  weight sync  stream: one bucket received outside vLLM's pool; object_store: none on the GPU
  A GPU needs u·G + weight sync.

Host RAM per node:
  learner rank plan.learner_host_gib (assumed: torch, CUDA, DeepSpeed, Ray worker) + its model load:
               z = 3 builds it partitioned (zero.Init), P·b/N + W·b; below, the whole model, P·b
  engine GPU   plan.engine_host_gib (assumed: a vLLM worker process)
  checkpoint   P·b in the page cache, once per node where anything loads it
  weight sync  stream over NCCL: nothing on the host. object_store (the path before streaming): rank 0
               copies the model to host (P·b), pickles it (P·b) and Ray stores that in its node's object
               store (P·b), 3·P·b at once (measured on this machine: ``kvrl bench sync``); each
               other node with engines holds the fetched object (P·b); each engine deserializes it (P·b)
               and vLLM's worker queue copies it to each of its t workers (t·P·b)

Learner traffic per rank and iteration (``learner_traffic``, bytes received; a ring collective over n
ranks brings (n-1)/n of its size), for T_t training and T_f forward-only micro-batches and s optimizer
steps, p = 3 passes a training micro-batch with gradient checkpointing (forward, recompute, backward)
or 2 without:
  parameter gathers   ZeRO-3: every pass gathers the model, P·b·(N-1)/N, (p·T_t + T_f) times; ZeRO-1/2:
                      the updated parameters once a step
  gradient reduction  ZeRO-2/3: a reduce-scatter of P·g·(N-1)/N a training micro-batch; below, an
                      all-reduce (twice that) a step
  all-to-all          expert parallelism e (``learner.expert_parallel``): in each of the L_moe layers each
                      of S tokens goes to its k experts and comes back, 2·S·k·h·b·(e-1)/e a pass, S the
                      micro-batch's tokens at full length (an upper bound: responses are shorter)
  With e > 1 the routed experts' R parameters leave the gathers and reductions over N ranks: a rank
  holds R/e of them, gathered and reduced over the N/e ranks that hold the same experts.

This machine's learners are CPU processes over gloo, so there the learner's "GPU" is its RSS, and two
terms join (``learner_sync_bytes``): gloo's all-gather holds what it gathers twice while it runs, and
rank 0's object-store copies are in the same memory. ``kvrl bench sync`` measures a
sync's RSS increase on a ~480 MB model against these formulas.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
    module_params: int = 0  # the largest module's own parameters: what one streamed gather holds
    tensor_params: int = 0  # the largest single parameter tensor
    moe_layers: int = 0
    experts_per_token: int = 0  # k
    moe_intermediate: int = 0  # I, one routed expert's width
    vision_layers: int = 0
    vision_hidden: int = 0
    heads: int = 0
    qk_head_dim: int = 0  # MLA: qk_nope_head_dim + qk_rope_head_dim
    v_head_dim: int = 0
    routed_params: int = 0  # every routed expert's parameters, all MoE layers
    experts: int = 0  # routed experts per MoE layer (E)


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
    text, vision = config.text_config, config.vision_config
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    total = sum(sizes.values())
    routed = sum(n for name, n in sizes.items() if ".mlp.experts." in name)
    tower = sum(n for name, n in sizes.items() if not name.startswith("language_model."))
    active = total - tower - routed + routed * text.num_experts_per_tok // max(text.n_routed_experts, 1)
    layer = max(sum(p.numel() for p in m.parameters()) for m in model.language_model.model.layers)
    own = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    moe = sum(1 for m in model.language_model.model.layers if hasattr(m.mlp, "experts"))
    return ModelShape(
        params=total,
        active_params=active,
        vision_params=tower,
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        vocab=text.vocab_size,
        layer_params=layer,
        kv_latent=text.kv_lora_rank + text.qk_rope_head_dim,
        muon_params=sum(p.numel() for name, p in model.named_parameters() if takes_muon(name, p.shape)),
        module_params=own,
        tensor_params=max(sizes.values()),
        moe_layers=moe,
        experts_per_token=text.num_experts_per_tok if moe else 0,
        moe_intermediate=text.moe_intermediate_size if moe else 0,
        vision_layers=vision.num_hidden_layers,
        vision_hidden=vision.hidden_size,
        heads=text.num_attention_heads,
        qk_head_dim=text.qk_nope_head_dim + text.qk_rope_head_dim,
        v_head_dim=text.v_head_dim,
        routed_params=routed,
        experts=text.n_routed_experts if moe else 0,
    )


@dataclass
class LearnerSetup:
    """What a learner rank's memory depends on besides the model (from the config)."""

    ranks: int
    zero_stage: int
    dtype_bytes: int
    tokens: int  # per micro-batch
    logits_chunk: int
    checkpointing: bool
    optimizer: str = "adamw"
    fp32_grad_accum: bool = False
    reduce_bucket: int = 0  # elements (ZeRO >= 1)
    prefetch_bucket: int = 0  # elements (ZeRO-3)
    patches: int = 0  # vision patches per micro-batch
    expert_parallel: int = 1  # e: the routed experts split over e ranks (learner.expert_parallel)


def learner_memory(m: ModelShape, s: LearnerSetup) -> dict[str, float]:
    """Bytes per learner GPU by kind, the weight sync apart (see the module docstring)."""
    P, b, N, W = m.params, s.dtype_bytes, s.ranks, m.layer_params
    held = P  # parameters a rank holds whole below ZeRO-3
    if s.expert_parallel > 1:  # a rank holds (and gathers) its E/e experts of a layer, not all E
        e, layer_experts = s.expert_parallel, m.routed_params / max(m.moe_layers, 1)
        W = W - layer_experts + layer_experts / e
        held = P - m.routed_params + m.routed_params / e
    params = P * b / N + (W + min(s.prefetch_bucket, W)) * b if s.zero_stage == 3 else held * b
    g = 4 if s.fp32_grad_accum and b < 4 else b
    # ZeRO >= 2 partitions the experts' gradients over the N/e ranks that share them: P/N as without EP
    grads = P * g / N if s.zero_stage >= 2 else held * g
    if s.zero_stage >= 1:
        grads += s.reduce_bucket * b + (W * b if s.zero_stage >= 2 else 0)
    state = optimizer_state_bytes(m, s.optimizer) + (MASTER_BYTES * P if b < 4 else 0)
    states = state / N if s.zero_stage >= 1 else state * held / P
    return {
        "parameters": params,
        "gradients": grads,
        "optimizer": states,
        "activations": decoder_activations(m, s) + logit_bytes(m, s) + vision_activations(m, s),
    }


@dataclass
class Iteration:
    """What one learner rank runs in an RL iteration (from the config)."""

    train_micro_batches: int  # forward + backward, over every pass
    forward_micro_batches: int  # forward only: the old log-prob pass (trainer.old_logprobs: learner)
    optimizer_steps: int


def learner_traffic(m: ModelShape, s: LearnerSetup, it: Iteration, expert_parallel: int) -> dict[str, float]:
    """Bytes a learner rank receives in one iteration, by kind (see the module docstring)."""
    N, b, e = s.ranks, s.dtype_bytes, expert_parallel
    g = 4 if s.fp32_grad_accum and b < 4 else b

    def share(n: int) -> float:  # what a rank receives of a ring all-gather or reduce-scatter
        return (n - 1) / n

    experts = m.routed_params if e > 1 else 0
    dense, local = m.params - experts, experts / e  # local: this rank's experts, over N/e peers
    gather = dense * b * share(N) + local * b * share(N // e)
    reduce = dense * g * share(N) + local * g * share(N // e)
    passes = 2 + int(s.checkpointing)  # forward, backward and, with checkpointing, the recompute
    runs = passes * it.train_micro_batches + it.forward_micro_batches
    out = {
        "parameter gathers": gather
        * (runs if s.zero_stage == 3 else it.optimizer_steps * (s.zero_stage > 0)),
        "gradient reduction": reduce
        * (it.train_micro_batches if s.zero_stage >= 2 else 2 * it.optimizer_steps),
        "all-to-all": 2 * m.moe_layers * s.tokens * m.experts_per_token * m.hidden * b * share(e) * runs,
    }
    out["total"] = sum(out.values())
    return out


def train_flops_per_token(m: ModelShape, context: float, head: bool = True) -> float:
    """Forward + backward FLOPs of one language-model token that attends to ``context`` tokens (causal:
    about half its sequence): 6 per active matrix parameter (the embedding is a lookup, not a matmul;
    routed experts at k of E), plus attention's two matmuls per layer, 2·H·(d_qk + d_v)·context forward,
    3x that with backward. ``head=False`` leaves out the LM head (V·h), which dominates a slice of a
    few layers. Model FLOPs: gradient checkpointing's recompute is not counted (the MFU convention)."""
    matrices = m.active_params - m.vocab * m.hidden - (0 if head else m.vocab * m.hidden)
    attention = 6 * m.layers * m.heads * (m.qk_head_dim + m.v_head_dim) * context
    return 6 * matrices + attention


def decoder_activations(m: ModelShape, s: LearnerSetup) -> float:
    S, h, b = s.tokens, m.hidden, s.dtype_bytes
    dense = S * h * LAYER_ACTIVATION_FACTOR * b / 2
    routed = 2 * S * m.experts_per_token * (2 * h + 3 * m.moe_intermediate) * b
    if s.expert_parallel > 1:  # the all-to-all's send and receive buffers, S·k rows each
        routed += 2 * S * m.experts_per_token * h * b
    one = dense + (routed if m.moe_layers else 0)
    if s.checkpointing:
        return m.layers * S * h * b + one
    return (m.layers - m.moe_layers) * dense + m.moe_layers * (dense + routed)


def logit_bytes(m: ModelShape, s: LearnerSetup) -> float:
    chunk = min(s.tokens, s.logits_chunk) if s.logits_chunk > 0 else s.tokens
    return chunk * m.vocab * (s.dtype_bytes + LOGIT_WORK_BYTES)


def vision_activations(m: ModelShape, s: LearnerSetup) -> float:
    X, hv, b = s.patches, m.vision_hidden, s.dtype_bytes
    one = X * hv * LAYER_ACTIVATION_FACTOR * b / 2
    return m.vision_layers * X * hv * b + one if s.checkpointing else m.vision_layers * one


def optimizer_state_bytes(m: ModelShape, optimizer: str) -> float:
    """The optimizer's own state for the whole model (no master weights): AdamW's two moments, or Muon's
    one momentum for the matrices it takes and AdamW's two for the rest."""
    muon = m.muon_params if optimizer == "muon" else 0
    return muon * MUON_STATE_BYTES + (m.params - muon) * ADAM_STATE_BYTES


def learner_sync_bytes(
    m: ModelShape,
    *,
    path: str,
    zero_stage: int,
    dtype_bytes: int,
    bucket_bytes: int,
    rank: int = 0,
    gloo: bool = False,
    host_learner: bool = False,
) -> float:
    """A learner rank's extra device memory during a weight sync (see the module docstring).

    ``gloo``: the ranks gather over gloo (CPU), whose all-gather fills a flat buffer of its own and
    copies it out, so what one all-gather brings is held twice while it runs (NCCL gathers in place):
    the streamed sync gathers at most the largest module at once, the full gather one parameter at a
    time (the largest: ``tensor_params``).
    ``host_learner``: the learner's device is host memory (CPU learners, this machine), so rank 0's
    object-store copies are on it too: the host copy, its pickled stream and the object store's copy,
    3·P·b at once while Ray stores the result (the gather, P·b, is released before)."""
    model, b = m.params * dtype_bytes, dtype_bytes
    copies = 2 if gloo else 1
    if path == "stream":
        gathered = copies * m.module_params * b if zero_stage == 3 else 0
        return gathered + (bucket_bytes if rank == 0 else 0)
    gathered = model + (m.tensor_params * b if gloo else 0) if zero_stage == 3 else 0
    if host_learner and rank == 0:
        return max(gathered + model, 3 * model)
    return gathered


def rollout_memory(
    m: ModelShape, *, tp: int, dtype_bytes: int, gpu_bytes: float, utilization: float, overhead: float
) -> dict[str, float]:
    """Bytes per rollout GPU: the engine's weight shard, and the KV-cache pool vLLM makes of the rest."""
    weights = m.params * dtype_bytes / tp
    return {"parameters": weights, "kv_cache": utilization * gpu_bytes - weights - overhead}


def kv_bytes_per_token(m: ModelShape, dtype_bytes: int) -> int:
    return m.layers * m.kv_latent * dtype_bytes


def kv_capacity(
    m: ModelShape, *, gpus: int, tp: int, gpu_bytes: float, utilization: float, overhead: float
) -> tuple[int, int]:
    """(engines, KV tokens per engine) when ``gpus`` rollout GPUs run engines of TP ``tp`` (bf16)."""
    pool = rollout_memory(
        m, tp=tp, dtype_bytes=2, gpu_bytes=gpu_bytes, utilization=utilization, overhead=overhead
    )["kv_cache"]
    return gpus // tp, max(0, int(pool // kv_bytes_per_token(m, 2)))


@dataclass
class HostSetup:
    """Who runs on one node, for its host RAM (bytes of the assumed per-process parts)."""

    learner_ranks: int
    engines: int
    tp: int
    learner_host: float
    engine_host: float
    rank0: bool  # learner rank 0 is here (it makes the object-store copies)


def host_memory(
    m: ModelShape, h: HostSetup, *, path: str, zero_stage: int, ranks: int, dtype_bytes: int
) -> dict[str, float]:
    """Host RAM of one node by kind (see the module docstring)."""
    model = m.params * dtype_bytes
    load = model / ranks + m.layer_params * dtype_bytes if zero_stage == 3 else model
    out = {
        "learner processes": h.learner_ranks * (h.learner_host + load),
        "engine processes": h.engines * h.tp * h.engine_host,
        "checkpoint page cache": model if h.learner_ranks or h.engines else 0.0,
        "weight sync": 0.0,
    }
    if path == "object_store":
        store = 3 * model if h.rank0 else (model if h.engines else 0.0)
        out["weight sync"] = store + h.engines * (1 + h.tp) * model
    return out


@dataclass
class Links:
    """Bandwidths the sync estimate assumes, GB/s (``PlanConfig``; none measured on a GPU yet)."""

    nvlink: float  # NCCL all-gather and broadcast bus bandwidth within a node
    network: float  # the same between nodes, per GPU
    pcie: float  # device <-> host copies
    host_copy: float  # one host thread copying or pickling tensors
    unit_latency_s: float  # per broadcast call (launch and synchronisation)


def sync_seconds(
    m: ModelShape,
    links: Links,
    *,
    path: str,
    dtype_bytes: int,
    ranks: int,
    zero_stage: int,
    tp: int,
    units: int,
    learners_span_nodes: bool,
    engines_off_node: bool,
) -> dict[str, float]:
    """Estimated seconds of one weight sync by step (GB = 1e9 bytes):
    stream: the ZeRO-3 gathers (P·b·(N-1)/N over the learners' link) and rank 0's broadcast of P·b (over
    NVLink when every engine shares its node, else the network), plus a latency per broadcast unit;
    object_store: the same gathers, a device-to-host copy, pickling into the object store, a network
    transfer to engines on other nodes, each engine's deserialization and its copy to each of its t
    workers (host copies), and the host-to-device load of P·b/t."""
    model = m.params * dtype_bytes / 1e9
    gather_link = links.network if learners_span_nodes else links.nvlink
    out = {"gather": model * (ranks - 1) / ranks / gather_link if zero_stage == 3 else 0.0}
    if path == "stream":
        out["broadcast"] = model / (links.network if engines_off_node else links.nvlink)
        out["per-unit latency"] = units * links.unit_latency_s
    else:
        out["device to host"] = model / links.pcie
        out["pickle into the object store"] = model / links.host_copy
        out["transfer"] = model / links.network if engines_off_node else 0.0
        out["engine: deserialize + copy to workers"] = (1 + tp) * model / links.host_copy
        out["host to device"] = model / tp / links.pcie
    out["total"] = sum(out.values())
    return out
