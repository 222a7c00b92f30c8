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
from kimivl.routes import merge_routes
from runkit.tokens import THINK_CLOSE, THINK_OPEN

from .engine import EngineConfig, Sample, make_llm, to_sample
from .inputs import collapse_placeholders, make_request
from .trajectory import REPEAT, RepeatConfig, RepeatWatch, Trajectory

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


@dataclass
class EngineStats:
    """What one engine did over some calls. ``slot_seconds`` sums, over its steps, the step's seconds
    times the sequences it held (at most ``max_num_seqs``): divided by ``seconds * max_num_seqs`` it is
    the busy fraction of its sequence slots."""

    requests: int = 0
    seconds: float = 0.0
    slot_seconds: float = 0.0
    steps: int = 0
    tokens: int = 0
    seq_steps: int = 0  # sequences held, summed over steps: tokens / seq_steps is tokens per step
    context_steps: int = 0  # cached tokens (prompt + response) of the sequences that stepped, summed
    prefill_tokens: int = 0  # prompt tokens computed (not found in the prefix cache)
    spec_seq_steps: int = 0  # speculative decoding: sequence-steps at a batch where drafting is on
    drafts: int = 0  # of them, those that verified a draft
    draft_tokens: int = 0  # tokens proposed, and accepted by the target model
    accepted_tokens: int = 0

    def add(self, other: EngineStats) -> None:
        for name, value in other.__dict__.items():
            setattr(self, name, getattr(self, name) + value)


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
        self.stats = EngineStats()  # of the last call
        if cfg.record_routes:
            self.llm.collective_rpc("kvrl_record_routes")

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

    def generate(
        self, requests: list[RolloutRequest], sampling: SamplingConfig, repeat: RepeatConfig | None = None
    ) -> list[RolloutResult]:
        """``sampling.n`` samples of each request; sample j of a request is seeded ``seed + j``. With
        ``repeat``, a looping sample stops where its repeat completes (finish reason ``"repeat"``)."""
        self.stats = EngineStats()
        vllm_requests = [make_request(r.prompt, r.images, self.processor.image_processor) for r in requests]
        budget = sampling.thinking_budget
        first_max = min(budget, sampling.max_tokens) if budget else sampling.max_tokens
        stops = [self.think_close] if budget else []
        n = sampling.n
        # One request per sample (as vLLM fans an n-sample request out itself, with the same seeds) so
        # that each sample finishes with its own time stamp.
        prompts = [v for v in vllm_requests for _ in range(n)]
        params = [self._params(sampling, r.seed + j, 1, first_max, stops) for r in requests for j in range(n)]
        keys = [f"{r.request_id}/{j}" for r in requests for j in range(n)]
        watches = [RepeatWatch(repeat) for _ in keys] if repeat is not None and repeat.enabled else None
        flat = self._run(prompts, params, keys, watches)
        results = []
        for i, (req, vreq) in enumerate(zip(requests, vllm_requests, strict=True)):
            samples = flat[i * n : (i + 1) * n]
            if budget:
                samples = self._finish_answers(req, vreq, samples, sampling, repeat)
            results.append(RolloutResult(req.request_id, samples))
        return results

    def extend(
        self,
        trajectories: list[Trajectory],
        sampling: SamplingConfig,
        max_new: int | None,
        version: int,
        repeat: RepeatConfig | None = None,
    ) -> list[Trajectory]:
        """Generate up to ``max_new`` more tokens (None: to the end) of every unfinished trajectory, and
        no more than its own ``budget``.

        New tokens are marked as sampled by policy ``version``. A trajectory finishes on its end-of-turn
        token (``"stop"``), at ``sampling.max_tokens`` (``"length"``), or, with ``repeat``, when its tail
        repeats one block (``"repeat"``); otherwise it comes back unfinished, to be continued.
        """
        if sampling.thinking_budget is not None:
            return self._extend_budgeted(trajectories, sampling, max_new, version, repeat)
        self.stats = EngineStats()
        built: dict[str, dict] = {}  # one decoded request (images included) per group
        prompts, params, todo = [], [], []
        for t in trajectories:
            room = sampling.max_tokens - len(t.response_ids)
            if t.done or room <= 0:
                t.finish_reason = t.finish_reason or "length"
                continue
            tokens = min(x for x in (room, max_new, t.budget) if x is not None)
            if tokens <= 0:  # no budget left in this rollout
                continue
            if t.group not in built:
                r = t.request
                built[t.group] = make_request(r.prompt, r.images, self.processor.image_processor)
            request = built[t.group]
            if t.response_ids:  # a continuation: the prompt as tokens, then its images again
                prompt_ids = collapse_placeholders(t.prompt_ids, self.image_token_id) + t.response_ids
                continuation = {"prompt_token_ids": prompt_ids}
                if "multi_modal_data" in request:
                    continuation["multi_modal_data"] = request["multi_modal_data"]
                request = continuation
            prompts.append(request)
            params.append(self._params(sampling, t.seed(), 1, tokens, []))
            todo.append((t, tokens))
        tok = self.processor.tokenizer
        watches = None
        if repeat is not None and repeat.enabled:
            watches = [RepeatWatch(repeat, t.response_ids) for t, _ in todo]
        outputs = self._run(prompts, params, [t.key for t, _ in todo], watches)
        for (t, asked), s in zip(todo, outputs, strict=True):
            if not t.prompt_ids:
                t.prompt_ids = s.prompt_token_ids
            t.extend(s.response_token_ids, s.logprobs, version)
            t.routes = merge_routes(t.routes, s.routes)  # keep-first: a segment keeps its own routing
            t.text = tok.decode(t.response_ids, skip_special_tokens=True)
            if s.finish_reason in ("stop", REPEAT):
                t.finish_reason = s.finish_reason
            elif len(t.response_ids) >= sampling.max_tokens or len(s.response_token_ids) < asked:
                t.finish_reason = "length"  # max_tokens, or the engine's max_model_len cut it short
            if t.done:
                t.finished_at = s.finished_at
        return trajectories

    def _extend_budgeted(
        self,
        trajectories: list[Trajectory],
        sampling: SamplingConfig,
        max_new: int | None,
        version: int,
        repeat: RepeatConfig | None,
    ) -> list[Trajectory]:
        """Whole groups under a thinking budget, through :meth:`generate` (which forces ``◁/think▷``)."""
        groups: dict[str, list[Trajectory]] = {}
        for t in trajectories:
            groups.setdefault(t.group, []).append(t)
        whole = all(sorted(t.sample for t in m) == list(range(sampling.n)) for m in groups.values())
        fresh = all(not t.response_ids and t.budget is None for t in trajectories)
        if max_new is not None or not whole or not fresh:
            raise ValueError(
                "a thinking budget needs whole groups sampled in one piece: no divided rollout, no partial "
                "rollouts (rollout.schedule.divided, rollout.partial.enabled)"
            )
        results = self.generate([m[0].request for m in groups.values()], sampling, repeat)
        for members, result in zip(groups.values(), results, strict=True):
            for t in members:
                s = result.samples[t.sample]
                t.prompt_ids, t.forced, t.routes = s.prompt_token_ids, list(s.forced), s.routes
                t.extend(s.response_token_ids, s.logprobs, version)
                t.text, t.finish_reason, t.finished_at = s.text, s.finish_reason or "length", s.finished_at
        return trajectories

    def _run(
        self, prompts: list[dict], params: list, keys: list[str], watches: list[RepeatWatch] | None = None
    ) -> list[Sample]:
        """One sample per prompt (each ``params`` has n=1), stepping the engine here rather than in
        ``LLM.generate``: each sample gets the time stamp of the step that finished it, and the busy
        sequence slots are counted (``self.stats``). Requests are named ``keys`` (``"{group}/{sample}"``):
        grouped speculative decoding reads the group from the name (``rollout/speculation.py``).

        ``watches`` (one per prompt): after every step, a request whose response now ends in a repeat
        is aborted and returned cut at the token that completed it, finish reason ``"repeat"``: every
        token it keeps was sampled, none is added."""
        if not prompts:
            return []
        engine = self.llm.llm_engine
        where = {key: i for i, key in enumerate(keys)}
        if len(where) != len(keys):
            twice = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"request ids must be unique within a call; given more than once: {twice[:5]}")
        for key, prompt, param in zip(keys, prompts, params, strict=True):
            engine.add_request(key, prompt, param)
        self.stats.requests += len(keys)
        drafted = self._spec_counts()
        out: list[Sample | None] = [None] * len(keys)
        slots, stats = self.cfg.max_num_seqs, self.stats
        limit = (self.cfg.speculative_max_batch or slots) if self.cfg.speculative_tokens else 0
        start = last = time.perf_counter()
        seen = [0] * len(keys)  # response tokens each request's watch has read
        while engine.has_unfinished_requests():
            held = min(engine.get_num_unfinished_requests(), slots)
            outputs = engine.step()
            now = time.perf_counter()
            stats.slot_seconds += held * (now - last)
            stats.seq_steps += held
            stats.spec_seq_steps += held if held <= limit else 0
            stats.steps += 1
            last = now
            stamp = time.time()
            for o in outputs:
                i = where[o.request_id]
                stats.context_steps += len(o.prompt_token_ids) + len(o.outputs[0].token_ids)
                if not seen[i]:
                    stats.prefill_tokens += len(o.prompt_token_ids) - (o.num_cached_tokens or 0)
                cut = None
                ids = o.outputs[0].token_ids
                if watches is not None:
                    cut = watches[i].first_repeat(list(ids[seen[i] :]))
                    cut = None if cut is None else seen[i] + cut
                seen[i] = len(ids)
                if not o.finished and cut is None:
                    continue
                sample = to_sample(o, o.outputs[0])
                if cut is not None:
                    if not o.finished:
                        engine.abort_request([o.request_id])
                    del sample.response_token_ids[cut:], sample.logprobs[cut:]
                    sample.finish_reason = REPEAT
                sample.finished_at = stamp
                stats.tokens += len(sample.response_token_ids)
                out[i] = sample
        stats.seconds += last - start
        stats.drafts, stats.draft_tokens, stats.accepted_tokens = (
            b - a for a, b in zip(drafted, self._spec_counts(), strict=True)
        )
        missing = [i for i, s in enumerate(out) if s is None]
        if missing:
            raise RuntimeError(f"the engine returned no output for {len(missing)} of {len(out)} requests")
        self._take_routes(keys, out)
        return out

    def _take_routes(self, keys: list[str], samples: list[Sample]) -> None:
        """With ``record_routes``: each finished sample's routes, for its prompt + response tokens."""
        if not self.cfg.record_routes or not keys:
            return
        lengths = {
            k: len(s.prompt_token_ids) + len(s.response_token_ids) for k, s in zip(keys, samples, strict=True)
        }
        (routes,) = self.llm.collective_rpc("kvrl_take_routes", args=(lengths,))
        for key, sample in zip(keys, samples, strict=True):
            sample.routes = routes[key]

    def _spec_counts(self) -> tuple[int, int, int]:
        """vLLM's running totals of drafts (sequence-steps with one), drafted tokens and accepted tokens
        (zeros without speculation)."""
        if self.llm.llm_engine.vllm_config.speculative_config is None:
            return 0, 0, 0
        names = (
            "vllm:spec_decode_num_drafts",
            "vllm:spec_decode_num_draft_tokens",
            "vllm:spec_decode_num_accepted_tokens",
        )
        counts = {m.name: m.value for m in self.llm.get_metrics() if m.name in names}  # counters
        return tuple(int(counts.get(name, 0)) for name in names)

    def _finish_answers(self, req, vreq, samples: list[Sample], sampling: SamplingConfig, repeat=None):
        """Continue each sample past the thinking-budget window.

        Closed its thinking itself: sample the answer. Still thinking when the budget ran out: force
        ``◁/think▷`` (marked in ``forced``), then sample the answer. Not thinking and cut by the window:
        keep generating up to ``max_tokens``. Finished (end of turn): leave it, unless it ended inside
        its thinking and ``always_answer`` is set: then drop the end-of-turn token and force as above.
        """

        follow, idx, room = [], [], []
        for j, s in enumerate(samples):
            if s.finish_reason == REPEAT:  # stopped for looping: it ends there
                continue
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
        watches = None
        if repeat is not None and repeat.enabled:  # the answer continues the response: watch all of it
            watches = [RepeatWatch(repeat, samples[j].response_token_ids) for j in idx]
        outs = self._run(follow, params, [f"{req.request_id}/{j}" for j in idx], watches)
        tok = self.processor.tokenizer
        for j, cont in zip(idx, outs, strict=True):
            s = samples[j]
            s.response_token_ids = s.response_token_ids + cont.response_token_ids
            s.logprobs = s.logprobs + cont.logprobs
            s.routes = merge_routes(s.routes, cont.routes)
            s.text = tok.decode(s.response_token_ids, skip_special_tokens=True)
            s.finish_reason = cont.finish_reason
            s.finished_at = cont.finished_at
        return samples

    def shutdown(self) -> None:
        """Stop the engine and free its memory (the worker is unusable after)."""
        self.llm.llm_engine.engine_core.shutdown()

    def join_stream(self, init: dict) -> None:
        """Join the weight stream's group (``rollout/stream.py``); blocks until every member has."""
        if not self.cfg.weight_stream:
            raise RuntimeError("this engine was built without EngineConfig.weight_stream")
        self.llm.init_weight_transfer_engine({"init_info": init})

    def receive_stream(self, update: dict, version: int) -> float:
        """Take one streamed sync (the sender broadcasts as this runs); returns seconds taken."""
        start = time.perf_counter()
        self.llm.start_weight_update()
        self.llm.update_weights({"update_info": update})
        self.llm.finish_weight_update()
        self._fresh_weights(version)
        seconds = time.perf_counter() - start
        log.info("weights v%d streamed in %.3f s", version, seconds)
        return seconds

    def _fresh_weights(self, version: int) -> None:
        # Outputs computed with the old weights must not be reused: KV prefixes and vision features.
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()
        self.weights_version = version

    def update_weights(self, state: dict, version: int) -> float:
        """Load full weights (official names) into the live engine; returns seconds taken."""
        start = time.perf_counter()
        self.llm.collective_rpc("kvrl_load_weights", args=(list(state.items()),))
        self._fresh_weights(version)
        seconds = time.perf_counter() - start
        log.info("weights v%d loaded in %.3f s", version, seconds)
        return seconds
