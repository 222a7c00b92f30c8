"""Cost models of one vLLM engine's decode step and prefill, for the rollout simulation
(``benchmarks/longtail_sim.py``): a Kimi-VL-A3B engine on H100s, written down from first principles, and
this machine's CPU engine, fitted to measured engine calls (``fit_cost``).

Cost model (one engine = one vLLM instance over TP GPUs; every number below is in ``kimi_vl_a3b_cost``)
------------------------------------------------------------------------------------------------------
A decode step of B running sequences whose cached contexts total S tokens is memory-bound: it reads the
weights once and every cached token's KV once, so

    t(B, S) = fixed + dense + routed * coverage(B) + seq * B + kv * S                         (seconds)

nearly flat in B (the batch rides on one weight read) until the KV pool or ``max_num_seqs`` caps B.

- Model (``kvrl plan`` arithmetic, ``actors.plan.model_shape`` on configs/kimi-vl-a3b/model_config.json):
  16,407,654,384 parameters, of which the vision tower + projector 447,545,840 (runs at prefill only) and
  the routed experts 14,394,851,328 = 26 MoE layers (first_k_dense_replace=1 of 27) x 64 experts x 3 x
  2048 x 1408. The input embedding 163,840 x 2,048 = 335,544,320 is a table lookup (a step reads B rows).
  What every step reads: 16,407,654,384 - 447,545,840 - 14,394,851,328 - 335,544,320 = 1,229,712,896
  parameters (attention, shared experts, the dense layer, norms, lm_head), bf16 (2 bytes).
- MoE coverage: each token picks 6 of 64 routed experts per layer; with T tokens in a step and routing
  independent across tokens, the expected share of experts read is 1 - (1 - 6/64)^T (vLLM's fused-MoE
  kernel skips experts that got no token). T=1 reads 9.4% of them (the "2.9 B active" of the model card);
  T=64 reads 99.8%, so a full batch reads about all 16 B language-model parameters, not 3 B. Correlated
  routing would read fewer: this is an upper bound on the weight read.
- TP = 2 (the layout configs/kimi-vl-a3b/rl-1x8.yaml had when this model was fit: 2 engines x TP 2;
  the shipped config now runs 3 engines x TP 1, ``SIM_LAYOUT`` below): each GPU reads half the
  weights, but MLA's latent KV cache is replicated on every TP rank (the ``kvrl plan`` docstring), so each
  GPU reads all of it: kv = 31,104 B per token (27 layers x (512 + 64) x 2 B, ``kv_bytes_per_token``)
  over one GPU's bandwidth, not divided by TP.
- Bandwidth: H100 SXM HBM3, 3.35 TB/s (NVIDIA datasheet; H200 is 4.8 TB/s) at 70% efficiency, 2.345e12 B/s
  (an assumption: decode kernels reach roughly 60-80% of peak bandwidth). It scales every step term but
  ``fixed`` alike, so the policies' ratios barely depend on it.
  dense = 1,229,712,896 x 2 / 2 / 2.345e12 = 0.524 ms; routed (all experts) = 6.138 ms;
  kv = 31,104 / 2.345e12 = 13.3 ns per cached token per step.
- fixed = 0.83 ms: TP all-reduces, 2 per layer (attention and MLP outputs) + 1 for the logits, 55 x 15 us
  (small-message NCCL all-reduce latency over NVLink, order 10-20 us). Host-side scheduling is taken as
  overlapped with the GPU (vLLM v1's async scheduling); set ``fixed_s`` from a measured step if not.
- seq = 0.84 us per sequence: its fp32 logits (163,840 x 4 B) written once and read twice (softmax,
  sampling) per step.
- Check it stays memory-bound: one decode token costs 2 x 2.58 G FLOPs (active parameters less the
  embedding) + 0.94 M FLOPs per context token (absorbed MLA: 2 x (576 + 512) x 16 heads x 27 layers);
  64 sequences at 8K context, 4 tokens each (speculative verification): 3.3 TFLOP per step, 4.2 ms on 2 GPUs
  at 989 TFLOP/s x 40%, against 14.5 ms of memory time. So compute does not set the step time here.
- Examples: t(64, 64 x 8192) = 0.83 + 0.52 + 6.13 + 0.05 + 6.95 = 14.5 ms (4,400 tokens/s per engine);
  t(1, 8192) = 2.0 ms (490 tokens/s): a lone straggler runs the engine at a ninth of its throughput.
- Prefill (a new prompt, a continuation on an engine without its KV, a preempted sequence) is
  compute-bound: 2 x 2.58 G FLOPs per token + 2 x (192 + 128) x 16 x 27 = 276,480 FLOPs per causal
  (query, key) pair, at 2 GPUs x 989 TFLOP/s (H100 bf16 dense) x 40% (an assumed MFU): 6.5 us per token
  + 0.35 ns per pair; a 16K-token context costs 0.15 s. The engine stalls for it (vLLM's chunked prefill
  mixes it into decode steps; the work is the same). A prompt's KV is shared by the samples of its group
  on an engine (prefix caching / n > 1); a sequence's own KV stays on the engine it last ran on.
  With a global KV cache (Seer's Mooncake pool) a continuation reuses its KV on any engine, the transfer
  overlapped with decoding (taken as free); without one it recomputes its context. New weights (the next
  iteration) invalidate every KV.
- Memory: the engine's KV pool holds 1,854,440 tokens (``kvrl plan`` on rl-1x8.yaml with ``SIM_LAYOUT``:
  0.9 x 80 GiB - 16.41 B x 2 B / TP 2 - 3 GiB overhead = 53.7 GiB / 31,104 B). vLLM admits a sequence
  when its context and the next step's tokens of all running sequences fit; when the running ones
  outgrow the pool it preempts the newest, which later recomputes its context (vLLM v1's recompute
  preemption).
- Speculative decoding: a sequence that verifies d drafted tokens adds them to the step's query tokens
  (so to the experts' coverage; the weights and KV are read once, the roofline check above), and the
  step's time is multiplied by ``spec_factor`` = 1.1 for drafting and rejection sampling (an assumption:
  Seer drafts from a per-group suffix tree on the CPU). How many tokens a draft has and how many are
  accepted are not modelled here: the simulator takes them measured (``benchmarks/longtail.py``).

CPU (``fit_cost``): the same form with the weight terms folded into ``fixed_s``, fitted by non-negative
least squares to engine calls of the tiny policy, each call's seconds against its steps, sequence-steps,
cached-context token-steps, prefilled tokens, drafts and drafted tokens (``rollout.worker.EngineStats``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# ---- Kimi-VL-A3B facts, from `kvrl plan` (actors/plan.py) on configs/kimi-vl-a3b/ (see the docstring) ----
PARAMS = 16_407_654_384  # model_shape(...).params
VISION_PARAMS = 447_545_840  # model_shape(...).vision_params
ACTIVE_PARAMS = 2_914_774_528  # model_shape(...).active_params: the language model per token
# MoE layers x routed experts x (gate, up, down) x hidden x moe_intermediate_size
ROUTED_PARAMS = 26 * 64 * 3 * 2048 * 1408
EMBED_PARAMS = 163_840 * 2048  # vocab x hidden: the input table, read B rows a step
LAYERS, HEADS = 27, 16
ROUTED_SHARE = 6 / 64  # num_experts_per_tok / n_routed_experts
# kv_bytes_per_token: layers x (kv_lora_rank + qk_rope_head_dim) x bf16
KV_BYTES_PER_TOKEN = 27 * (512 + 64) * 2
KV_POOL_TOKENS = 1_854_440  # make_plan(rl-1x8.yaml with SIM_LAYOUT).kv_tokens: one engine's KV pool
# The engines the simulation models: rl-1x8.yaml's rollout as it was when the cost model was fit (TP 2).
SIM_LAYOUT = (
    "resources.learner_ranks=4",
    "resources.rollout_actors=2",
    "resources.rollout_gpus=2",
    "rollout.tensor_parallel_size=2",
)
VOCAB = 163_840
BF16 = 2
# ---- H100 SXM (NVIDIA datasheet) and the stated efficiencies ----
HBM_BYTES_PER_S = 3.35e12
BANDWIDTH_EFFICIENCY = 0.7  # assumption: decode kernels reach ~60-80% of peak HBM bandwidth
PEAK_FLOPS = 989e12  # bf16 dense tensor cores
PREFILL_MFU = 0.4  # assumption: prefill is a small share of rollout time either way
ALLREDUCE_S = 15e-6  # small-message NCCL all-reduce latency over NVLink (order 10-20 us)


@dataclass(frozen=True)
class CostModel:
    """One engine's decode-step and prefill times, seconds (formulas and numbers: module docstring)."""

    fixed_s: float  # per step, whatever the batch: TP all-reduces
    dense_s: float  # reading the weights every token uses
    routed_s: float  # reading every routed expert; a step reads the share its tokens cover
    routed_share: float  # experts one token routes to / routed experts (0: no MoE term)
    seq_s: float  # per running sequence: logits and sampling
    kv_s: float  # per cached context token of the running sequences
    prefill_token_s: float = 0.0  # per prefilled token: its linear layers
    prefill_pair_s: float = 0.0  # per causal (query, key) pair: prefill attention
    draft_s: float = 0.0  # per sequence verifying a draft (CPU: its query goes down the prefill path)
    draft_token_s: float = 0.0  # per drafted token verified
    spec_factor: float = 1.0  # a step with drafts: its time times this (drafting, rejection sampling)

    def step_s(self, batch: int, context: float, drafts: int = 0, draft_tokens: float = 0.0) -> float:
        """Seconds of one step of ``batch`` sequences, ``context`` cached tokens in all, ``drafts`` of
        them verifying ``draft_tokens`` drafted tokens in all (speculative decoding)."""
        covered = 1.0 - (1.0 - self.routed_share) ** (batch + draft_tokens)
        return (
            self.fixed_s
            + self.dense_s
            + self.routed_s * covered
            + self.seq_s * batch
            + self.kv_s * context
            + self.draft_s * drafts
            + self.draft_token_s * draft_tokens
        ) * (self.spec_factor if drafts else 1.0)

    def prefill_s(self, cached: float, context: float) -> float:
        """Seconds to compute the KV of positions [cached, context) given the first ``cached`` ones."""
        pairs = (context * context - cached * cached) / 2
        return self.prefill_token_s * (context - cached) + self.prefill_pair_s * pairs


def kimi_vl_a3b_cost(tp: int = 2, hbm_bytes_per_s: float = HBM_BYTES_PER_S) -> CostModel:
    """Kimi-VL-A3B on one vLLM engine over ``tp`` H100-class GPUs (every number: module docstring)."""
    bandwidth = hbm_bytes_per_s * BANDWIDTH_EFFICIENCY
    dense = PARAMS - VISION_PARAMS - ROUTED_PARAMS - EMBED_PARAMS
    linear_flops = 2 * (ACTIVE_PARAMS - EMBED_PARAMS)
    pair_flops = 2 * (192 + 128) * HEADS * LAYERS  # (qk_nope + qk_rope) and v_head dims, non-absorbed
    flops = tp * PEAK_FLOPS * PREFILL_MFU
    return CostModel(
        fixed_s=(2 * LAYERS + 1) * ALLREDUCE_S if tp > 1 else 0.0,
        dense_s=dense * BF16 / tp / bandwidth,
        routed_s=ROUTED_PARAMS * BF16 / tp / bandwidth,
        routed_share=ROUTED_SHARE,
        seq_s=3 * VOCAB * 4 / bandwidth,
        kv_s=KV_BYTES_PER_TOKEN / bandwidth,  # the latent cache is replicated, not split, across TP ranks
        prefill_token_s=linear_flops / flops,
        prefill_pair_s=pair_flops / flops,
        spec_factor=1.1,  # an assumption (module docstring)
    )


def tokens_per_step(accept_rate: float, draft_tokens: int) -> float:
    """Expected tokens a sequence gains per verification step with i.i.d. acceptance ``accept_rate`` of
    ``draft_tokens`` drafts: (1 - a^(k+1)) / (1 - a) (Leviathan et al. 2023), the expected accepted
    prefix plus the one token verification always yields. Only for stating an assumed acceptance: the
    simulator takes accepted tokens per draft measured where it can."""
    if accept_rate >= 1.0:
        return draft_tokens + 1.0
    return (1.0 - accept_rate ** (draft_tokens + 1)) / (1.0 - accept_rate)


# EngineStats fields the CPU cost is fitted on, and the CostModel term each one's coefficient becomes
FIT_TERMS = {
    "steps": "fixed_s",
    "seq_steps": "seq_s",
    "context_steps": "kv_s",
    "prefill_tokens": "prefill_token_s",
    "drafts": "draft_s",
    "draft_tokens": "draft_token_s",
}


def fit_cost(calls: Sequence[dict]) -> tuple[CostModel, dict]:
    """A CPU engine's cost model from measured engine calls (``EngineStats`` as dicts): seconds =
    sum over ``FIT_TERMS`` of coefficient x count, coefficients >= 0 (non-negative least squares by
    active set: a term fitted negative is dropped and the rest refitted). Returns the model and the fit's
    quality: calls, relative RMS error, and R^2 of the call times."""
    rows = [c for c in calls if c["steps"] > 0]
    if len(rows) < 2 * len(FIT_TERMS):
        raise ValueError(f"fit_cost needs at least {2 * len(FIT_TERMS)} engine calls, got {len(rows)}")
    x = np.array([[float(c[k]) for k in FIT_TERMS] for c in rows])
    y = np.array([float(c["seconds"]) for c in rows])
    keep = [j for j in range(x.shape[1]) if x[:, j].any()]
    while True:
        coef, *_ = np.linalg.lstsq(x[:, keep], y, rcond=None)
        if (coef >= 0).all():
            break
        keep = [j for j, c in zip(keep, coef, strict=True) if c >= 0]
    full = np.zeros(x.shape[1])
    full[keep] = coef
    pred = x @ full
    quality = {
        "calls": len(rows),
        "relative_rms_error": float(np.sqrt(np.mean(((pred - y) / y) ** 2))),
        "r2": float(1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()),
        "terms": {FIT_TERMS[k]: float(v) for k, v in zip(FIT_TERMS, full, strict=True)},
    }
    fields = dict.fromkeys(("dense_s", "routed_s", "routed_share"), 0.0)
    return CostModel(**fields, **quality["terms"]), quality


def fit_call_overhead(calls: Sequence[dict]) -> dict[str, float]:
    """Per engine call, what its wall time (``wall_s``, from the pool's request to its result) spends
    outside the engine's steps (``seconds``): ``call_s`` + ``call_request_s`` per request, least squares
    with both >= 0 (the Ray round trip, building the requests, converting the outputs)."""
    rows = [c for c in calls if "wall_s" in c]
    if len(rows) < 2:
        raise ValueError(f"fit_call_overhead needs at least 2 calls with a wall time, got {len(rows)}")
    x = np.array([[1.0, float(c["requests"])] for c in rows])
    y = np.array([max(0.0, c["wall_s"] - c["seconds"]) for c in rows])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    if coef[1] < 0:  # per request cannot save time: one constant
        coef = np.array([y.mean(), 0.0])
    elif coef[0] < 0:
        coef = np.array([0.0, float((x[:, 1] @ y) / (x[:, 1] @ x[:, 1]))])
    return {"call_s": float(coef[0]), "call_request_s": float(coef[1]), "calls": len(rows)}
