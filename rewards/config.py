"""Reward settings (the ``rewards:`` section of a stage config)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .extract import DEFAULT_MAX_CHARS
from .length import LengthPenalty
from .registry import resolve_scorer
from .sandbox import Task, VerifierPool, problem_task
from .styles import STYLES
from .verifiers import DEFAULT_VERIFIER


@dataclass
class RewardConfig:
    """``verifier`` is the default for rows without a ``verifier`` column: a built-in name,
    ``package.module:function`` or a ``kvrl.verifiers`` entry point. ``cpu_time_s`` is the CPU time one
    verifier call may use; unset means ``max(60, 10 * timeout_s)``."""

    verifier: str = DEFAULT_VERIFIER
    # How to call rewards.verifier: auto (from its parameters) or kvrl, kvrl_rich, verl, trl, openrlhf
    # (rewards/styles.py); a row's own verifier takes a '@STYLE' suffix or is detected
    verifier_style: str = "auto"
    # A graded score (verl, TRL, OpenRLHF, kvrl_rich styles) is the reward; it counts as correct
    # (accuracy, curriculum success, the length reward's split) from this value on
    correct_threshold: float = 1.0
    workers: int = 2
    timeout_s: float = 10.0
    memory_mb: int = 2048
    cpu_time_s: int | None = None
    max_answer_chars: int = DEFAULT_MAX_CHARS
    length: LengthPenalty = field(default_factory=LengthPenalty)

    def __post_init__(self):
        if self.verifier_style not in ("auto", *STYLES):
            raise ValueError(
                f"verifier_style must be auto or one of {', '.join(STYLES)}, got {self.verifier_style!r}"
            )
        resolve_scorer(self.verifier, self.verifier_style)  # fail at config time, naming the verifier
        for name in ("workers", "memory_mb", "max_answer_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.cpu_time_s is not None and self.cpu_time_s < 1:
            raise ValueError(f"cpu_time_s must be >= 1, got {self.cpu_time_s}")

    def task(
        self, response: str, gold, verifier: str | None = None, prompt: str = "", row: dict | None = None
    ) -> Task:
        """A verification of ``response``: by a row's own ``verifier`` (its style from its suffix or
        detected) or by ``rewards.verifier`` in ``rewards.verifier_style``."""
        style = None if verifier else self.verifier_style
        return problem_task(
            response, gold, verifier or self.verifier, prompt, row, style, self.correct_threshold
        )

    @property
    def verifier_spec(self) -> str:
        """``rewards.verifier`` with its declared style as a suffix, for paths that take a name only."""
        declared = self.verifier_style != "auto" and "@" not in self.verifier
        return f"{self.verifier}@{self.verifier_style}" if declared else self.verifier

    def make_pool(self) -> VerifierPool:
        return VerifierPool(
            self.workers, self.timeout_s, self.memory_mb, self.max_answer_chars, cpu_time_s=self.cpu_time_s
        )
