"""A trajectory: one sampled response, carried across chunks, engines and RL iterations.

Seer's divided rollout (arXiv 2511.14617) generates each sample of a group as its own request, a chunk
of tokens at a time, and may send the next chunk to another engine; Kimi k1.5's partial rollouts
(sec. 2.6.2) continue an unfinished response in the next iteration, under newer weights. Both need the
same record: the prompt, the tokens so far with their log-probs, and for each token the policy version
(the RL iteration whose weights sampled it), because the reference log-probs of a token are those of
the policy that generated it.

Seeds: the first segment of sample j uses ``seed + j``, exactly what vLLM gives sample j of an n-sample
request, so a trajectory generated in one piece reproduces the synchronous pool's draws. A later
segment uses a seed derived from (seed, j, tokens so far): it does not depend on which engine runs it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from kimivl.routes import routes_from_state, routes_state

from .engine import Sample

if TYPE_CHECKING:
    from .worker import RolloutRequest

# finish reasons beyond vLLM's "stop" and "length"
REPEAT = "repeat"  # stopped early: its tail repeats one block (k1.5 sec. 2.6.2)


@dataclass
class Trajectory:
    """One sample of one prompt. ``group`` is the prompt's request id; its samples share it."""

    request: RolloutRequest
    sample: int
    prompt_ids: list[int] = field(default_factory=list)  # expanded, as the engine returned it
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # per response token, of the policy that sampled it
    born: list[int] = field(default_factory=list)  # per response token: the policy version that sampled it
    forced: list[int] = field(default_factory=list)  # positions a thinking budget forced in (not sampled)
    finish_reason: str | None = None  # None while unfinished
    finished_at: float | None = None  # wall clock (time.time()) of the step that finished it
    text: str = ""
    budget: int | None = None  # tokens it may still sample in this rollout (partial rollouts); None: no cap
    routes: np.ndarray | None = None  # the experts each token went to, when recorded (kimivl/routes.py)

    @property
    def group(self) -> str:
        return self.request.request_id

    @property
    def key(self) -> str:
        """``"{group}/{sample}"``: unique in a rollout, and what the engine's request names carry."""
        return f"{self.group}/{self.sample}"

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def seed(self) -> int:
        if not self.response_ids:
            return self.request.seed + self.sample
        return zlib.crc32(f"{self.request.seed}:{self.sample}:{len(self.response_ids)}".encode())

    def extend(self, ids: list[int], logprobs: list[float], version: int) -> None:
        self.response_ids += ids
        self.logprobs += logprobs
        self.born += [version] * len(ids)
        if self.budget is not None:
            self.budget -= len(ids)

    @property
    def paused(self) -> bool:
        """Unfinished with no budget left in this rollout: it waits for the next one."""
        return not self.done and self.budget is not None and self.budget <= 0

    def stale_tokens(self, version: int) -> int:
        """How many leading tokens older policies than ``version`` sampled (a prefix: segments append)."""
        return sum(1 for b in self.born if b < version)

    def to_sample(self) -> Sample:
        return Sample(
            list(self.prompt_ids),
            list(self.response_ids),
            list(self.logprobs),
            self.text,
            self.finish_reason,
            list(self.forced),
            self.finished_at,
            self.routes,
        )

    def state_dict(self) -> dict:
        """Everything but the request (its prompt and images are rebuilt from the problem on resume)."""
        return {
            "group": self.group,
            "sample": self.sample,
            "prompt_ids": self.prompt_ids,
            "response_ids": self.response_ids,
            "logprobs": self.logprobs,
            "born": self.born,
            "forced": self.forced,
            "finish_reason": self.finish_reason,
            "text": self.text,
            "routes": routes_state(self.routes),
        }

    @classmethod
    def from_state(cls, state: dict, request: RolloutRequest) -> Trajectory:
        if state["group"] != request.request_id:
            raise ValueError(f"trajectory of group {state['group']!r} given request {request.request_id!r}")
        lengths = {len(state[k]) for k in ("response_ids", "logprobs", "born")}
        if len(lengths) != 1:
            raise ValueError(
                f"trajectory {state['group']}/{state['sample']}: token, log-prob and version "
                "lists differ in length"
            )
        return cls(
            request,
            int(state["sample"]),
            list(state["prompt_ids"]),
            list(state["response_ids"]),
            [float(x) for x in state["logprobs"]],
            [int(x) for x in state["born"]],
            [int(x) for x in state.get("forced", [])],
            state.get("finish_reason"),
            None,
            state.get("text", ""),
            routes=routes_from_state(state.get("routes")),
        )


@dataclass
class RepeatConfig:
    """Stop a response whose last ``min_repeats`` blocks of some length up to ``max_period`` tokens are
    identical (k1.5 sec. 2.6.2: repeated sequences are detected, stopped early and penalized).

    A repeat is checked after every engine step (:class:`RepeatWatch`), on every rollout path, so a
    looping response stops at the token that completes the repeat; nothing is appended to it. The
    defaults leave kvrl's own traces alone: the demo task's re-checks repeat a block at most 4 times.
    """

    enabled: bool = True
    max_period: int = 32
    min_repeats: int = 8
    penalty: float = 0.5  # subtracted from the reward of a stopped response

    def __post_init__(self):
        if self.max_period < 1 or self.min_repeats < 2:
            raise ValueError(
                f"rollout.repeat: max_period must be >= 1 and min_repeats >= 2, got {self.max_period}, "
                f"{self.min_repeats}"
            )
        if self.penalty < 0:
            raise ValueError(f"rollout.repeat.penalty must be >= 0, got {self.penalty}")


def repeated_period(ids: list[int], max_period: int, min_repeats: int) -> int | None:
    """The shortest p <= ``max_period`` such that the last ``min_repeats * p`` tokens are one p-token
    block ``min_repeats`` times over, or None. E.g. [9, 1, 2, 1, 2, 1, 2] with min_repeats 3 -> 2."""
    for p in range(1, max_period + 1):
        span = p * min_repeats
        if span > len(ids):
            return None
        block = ids[-p:]
        if all(ids[-span + k * p : len(ids) - span + (k + 1) * p] == block for k in range(min_repeats - 1)):
            return p
    return None


class RepeatWatch:
    """:func:`repeated_period` kept up to date token by token, at O(``max_period``) per token.

    For each period p it counts how many of the latest tokens equal the token p before them; the last
    ``min_repeats * p`` tokens are one block ``min_repeats`` times over exactly when that count reaches
    ``(min_repeats - 1) * p``. ``history``: the tokens the response already has (a continuation).
    """

    def __init__(self, cfg: RepeatConfig, history: list[int] = ()):
        self.max_period, self.min_repeats = cfg.max_period, cfg.min_repeats
        self.tail: list[int] = []  # the last max_period + 1 tokens
        self.runs = [0] * (cfg.max_period + 1)  # runs[p]: latest tokens equal to the token p before
        for token in history:
            self.push(token)

    def push(self, token: int) -> bool:
        """Add one token; True if the response now ends in a repeat."""
        tail, runs = self.tail, self.runs
        if token not in tail:  # matches no token up to max_period back: every run restarts (the usual case)
            tail.append(token)
            if len(tail) > self.max_period + 1:
                del tail[0]
            runs[:] = [0] * len(runs)
            return False
        tail.append(token)
        if len(tail) > self.max_period + 1:
            del tail[0]
        hit = False
        for p in range(1, min(self.max_period, len(tail) - 1) + 1):
            runs[p] = runs[p] + 1 if tail[-1 - p] == token else 0
            hit = hit or runs[p] >= (self.min_repeats - 1) * p
        return hit

    def first_repeat(self, tokens: list[int]) -> int | None:
        """Push ``tokens``; the count of them up to the one that completes a repeat (None: no repeat)."""
        for i, token in enumerate(tokens):
            if self.push(token):
                return i + 1
        return None
