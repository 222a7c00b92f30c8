"""A rollout worker: one vLLM engine that samples n responses per prompt and takes new weights in place.

The engine runs in this process (vLLM's in-process mode), so a weight update is a direct
``load_weights`` on the live model: no engine restart, no disk. Calls are served one at a time, so
no generation ever sees half-updated weights.

Thinking budget: with ``thinking_budget`` set, a response that has not closed its thinking after
that many tokens gets ``◁/think▷`` appended and is continued for up to ``answer_tokens`` more
(the Kimi-VL test-time-scaling protocol). The forced token is marked in ``forced`` so training
can leave it out of the loss. With ``always_answer`` (budget-forcing evaluations, ``kvrl eval tts
--mode force``) a thinking section the model ends with its end-of-turn token before the budget is
closed the same way, that end-of-turn token dropped, so every response gets an answer section.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from kimivl import KimiVLProcessor
from runkit.tokens import THINK_CLOSE, THINK_OPEN

from .engine import EngineConfig, Sample, make_llm, to_samples
from .inputs import collapse_placeholders, make_request

log = logging.getLogger(__name__)

WORKER_EXTENSION = "rollout.weight_sync.WeightReceiver"


class _NoThreadBindingNoise(logging.Filter):
    """In-process, vLLM's CPU worker replaces ``torch.set_num_threads`` with a warning, and vLLM's own
    multimodal preprocessing calls it once per image request: that warning says nothing here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "torch.set_num_threads" not in record.getMessage()


_QUIET = _NoThreadBindingNoise()


@dataclass
class SamplingConfig:
    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    thinking_budget: int | None = None  # max thinking tokens before ◁/think▷ is forced
    answer_tokens: int = 64  # tokens allowed after a forced ◁/think▷
    always_answer: bool = False  # with a budget: also force ◁/think▷ where the turn ended inside thinking

    def __post_init__(self):
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1, got n={self.n}, max_tokens={self.max_tokens}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.thinking_budget is not None and self.thinking_budget < 1:
            raise ValueError(f"thinking_budget must be >= 1 or null, got {self.thinking_budget}")


def answer_seed(seed: int, sample: int) -> int:
    """The seed of sample ``sample``'s answer phase: a stream of its own. vLLM seeds sample j of a
    request with ``seed + j``, so ``seed + 1 + j`` would replay sample j + 1's draws."""
    return zlib.crc32(f"{seed}:answer:{sample}".encode())


@dataclass
class RolloutRequest:
    """One prompt to sample: ``prompt`` is chat-formatted text with one ``<|media_pad|>`` per image."""

    request_id: str
    prompt: str
    images: list[Any] = field(default_factory=list)
    seed: int = 0


@dataclass
class RolloutResult:
    request_id: str
    samples: list[Sample]


class RolloutWorker:
    def __init__(self, cfg: EngineConfig):
        # In-process engine: weight updates reach the model directly (see module docstring).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        extra = dict(cfg.extra)
        extra.setdefault("worker_extension_cls", WORKER_EXTENSION)
        self.cfg = EngineConfig(**{**cfg.__dict__, "extra": extra})
        self.llm = make_llm(self.cfg)
        logging.getLogger("vllm.v1.worker.cpu_worker").addFilter(_QUIET)
        self.processor = KimiVLProcessor.from_pretrained(cfg.model)
        tok = self.processor.tokenizer
        self.think_close = tok.convert_tokens_to_ids(THINK_CLOSE)
        self.think_open = tok.convert_tokens_to_ids(THINK_OPEN)
        self.image_token_id = tok.convert_tokens_to_ids("<|media_pad|>")
        self.weights_version = 0

    def _params(self, sampling: SamplingConfig, seed: int, n: int, max_tokens: int, stop_ids: list[int]):
        from vllm import SamplingParams

        return SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=max_tokens,
            logprobs=0,
            seed=seed,
            stop_token_ids=stop_ids or None,
        )

    def generate(self, requests: list[RolloutRequest], sampling: SamplingConfig) -> list[RolloutResult]:

        vllm_requests = [make_request(r.prompt, r.images, self.processor.image_processor) for r in requests]
        budget = sampling.thinking_budget
        first_max = min(budget, sampling.max_tokens) if budget else sampling.max_tokens
        stops = [self.think_close] if budget else []
        params = [self._params(sampling, r.seed, sampling.n, first_max, stops) for r in requests]
        outputs = to_samples(self.llm.generate(vllm_requests, params, use_tqdm=False))
        results = []
        for req, vreq, samples in zip(requests, vllm_requests, outputs, strict=True):
            if budget:
                samples = self._finish_answers(req, vreq, samples, sampling)
            results.append(RolloutResult(req.request_id, samples))
        return results

    def _finish_answers(self, req, vreq, samples: list[Sample], sampling: SamplingConfig):
        """Continue each sample past the thinking-budget window.

        Closed its thinking itself: sample the answer. Still thinking when the budget ran out: force
        ``◁/think▷`` (marked in ``forced``), then sample the answer. Not thinking and cut by the window:
        keep generating up to ``max_tokens``. Finished (end of turn): leave it, unless it ended inside
        its thinking and ``always_answer`` is set: then drop the end-of-turn token and force as above.
        """

        follow, idx, room = [], [], []
        for j, s in enumerate(samples):
            ids = s.response_token_ids
            opened = (
                bool(s.prompt_token_ids) and s.prompt_token_ids[-1] == self.think_open
            ) or self.think_open in ids
            if ids and ids[-1] == self.think_close:
                tokens = sampling.answer_tokens
            elif opened and (s.finish_reason == "length" or (sampling.always_answer and ids)):
                if s.finish_reason != "length":  # ended its turn while thinking: drop end-of-turn
                    ids, s.logprobs = ids[:-1], s.logprobs[:-1]
                s.response_token_ids = [*ids, self.think_close]
                s.logprobs = [*s.logprobs, 0.0]
                s.forced.append(len(ids))
                tokens = sampling.answer_tokens
            elif not opened and s.finish_reason == "length" and len(ids) < sampling.max_tokens:
                tokens = sampling.max_tokens - len(ids)
            else:
                continue
            prompt_ids = collapse_placeholders(s.prompt_token_ids, self.image_token_id) + s.response_token_ids
            request = {"prompt_token_ids": prompt_ids}
            if "multi_modal_data" in vreq:
                request["multi_modal_data"] = vreq["multi_modal_data"]
            follow.append(request)
            idx.append(j)
            room.append(tokens)
        if not follow:
            return samples
        params = [
            self._params(sampling, answer_seed(req.seed, j), 1, n, []) for j, n in zip(idx, room, strict=True)
        ]
        outs = to_samples(self.llm.generate(follow, params, use_tqdm=False))
        tok = self.processor.tokenizer
        for j, (cont,) in zip(idx, outs, strict=True):
            s = samples[j]
            s.response_token_ids = s.response_token_ids + cont.response_token_ids
            s.logprobs = s.logprobs + cont.logprobs
            s.text = tok.decode(s.response_token_ids, skip_special_tokens=True)
            s.finish_reason = cont.finish_reason
        return samples

    def shutdown(self) -> None:
        """Stop the engine and free its memory (the worker is unusable after)."""
        self.llm.llm_engine.engine_core.shutdown()

    def update_weights(self, state: dict, version: int) -> float:
        """Load full weights (official names) into the live engine; returns seconds taken."""
        start = time.perf_counter()
        self.llm.collective_rpc("kvrl_load_weights", args=(list(state.items()),))
        # Outputs computed with the old weights must not be reused: KV prefixes and vision features.
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()
        self.weights_version = version
        seconds = time.perf_counter() - start
        log.info("weights v%d loaded in %.3f s", version, seconds)
        return seconds
