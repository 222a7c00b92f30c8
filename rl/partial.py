"""Partial rollouts (Kimi k1.5 sec. 2.6.2): the replay buffer of trajectories that span iterations.

Each iteration a trajectory may sample at most ``segment_tokens`` new tokens; one still unfinished then
waits here and continues in the next iteration, under the new weights, until it finishes or has spanned
``max_iterations`` iterations (its last iteration has no cap, so no response is ever cut short by the
buffer). A group is learned from only once every sample of it is done: group statistics stay over whole
groups (DESIGN.md), and a short response does not wait for a long one of another group.

The tokens of a carried trajectory come from several policies. Their reference log-probs are those of the
policy that sampled them, which the rollout engine recorded (``Trajectory.logprobs``); with
``old_segments="mask"`` (slime's choice) they only condition the newer tokens and carry no loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from rollout.trajectory import Trajectory
from rollout.worker import RolloutRequest


@dataclass
class PartialConfig:
    enabled: bool = False
    segment_tokens: int = 256  # new tokens per trajectory per iteration
    max_iterations: int = 4  # iterations one trajectory may span; its last one has no cap
    old_segments: Literal["reuse", "mask"] = "reuse"  # k1.5 reuses them; "mask": no loss on them

    def __post_init__(self):
        if self.segment_tokens < 1 or self.max_iterations < 1:
            raise ValueError(
                "rollout.partial.segment_tokens and rollout.partial.max_iterations must be >= 1, got "
                f"{self.segment_tokens}, {self.max_iterations}"
            )
        if self.old_segments not in ("reuse", "mask"):
            raise ValueError(
                f"rollout.partial.old_segments must be 'reuse' or 'mask', got {self.old_segments!r}"
            )


def group_key(problem_id: str, iteration: int) -> str:
    """A group's request id: its problem and the iteration that started it."""
    return f"{problem_id}@{iteration}"


def parse_group(key: str) -> tuple[str, int]:
    problem_id, _, iteration = key.rpartition("@")
    return problem_id, int(iteration)


class PartialBuffer:
    """Trajectories of groups that are not complete yet, between iterations."""

    def __init__(self, cfg: PartialConfig):
        self.cfg = cfg
        self.waiting: list[Trajectory] = []  # every trajectory of the incomplete groups, done or not

    def schedule(self, fresh: Sequence[Trajectory], iteration: int) -> list[Trajectory]:
        """This iteration's trajectories, carried ones first, each with its token budget."""
        out = [*self.waiting, *fresh]
        self.waiting = []
        for t in out:
            t.budget = self._budget(t, iteration)
        return out

    def collect(self, trajectories: Sequence[Trajectory]) -> list[list[Trajectory]]:
        """The groups that are complete now, in the order their first sample came; the rest wait."""
        groups: dict[str, list[Trajectory]] = {}
        for t in trajectories:
            t.budget = None
            groups.setdefault(t.group, []).append(t)
        complete = []
        for members in groups.values():
            if all(t.done for t in members):
                complete.append(sorted(members, key=lambda t: t.sample))
            else:
                self.waiting += members
        return complete

    def carried(self) -> int:
        """Unfinished trajectories waiting for the next iteration."""
        return sum(not t.done for t in self.waiting)

    def _budget(self, t: Trajectory, iteration: int) -> int | None:
        if not self.cfg.enabled:
            return None
        _, started = parse_group(t.group)
        last = iteration - started + 1 >= self.cfg.max_iterations
        return None if last else self.cfg.segment_tokens

    def state_dict(self) -> list[dict]:
        return [t.state_dict() for t in self.waiting]

    def load_state_dict(self, states: Sequence[dict], request: Callable[[str], RolloutRequest]) -> None:
        """``request(group)`` rebuilds a group's prompt, images and seed (they are not checkpointed)."""
        built: dict[str, RolloutRequest] = {}
        self.waiting = []
        for state in states:
            group = state["group"]
            if group not in built:
                built[group] = request(group)
            self.waiting.append(Trajectory.from_state(state, built[group]))
