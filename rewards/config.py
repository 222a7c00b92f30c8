"""Reward settings (the ``rewards:`` section of a stage config)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .extract import DEFAULT_MAX_CHARS
from .length import LengthPenalty
from .registry import resolve_verifier
from .sandbox import VerifierPool
from .verifiers import DEFAULT_VERIFIER


@dataclass
class RewardConfig:
    """``verifier`` is the default for rows without a ``verifier`` column: a built-in name,
    ``package.module:function`` or a ``kvrl.verifiers`` entry point. ``cpu_time_s`` is the CPU time one
    verifier call may use; unset means ``max(60, 10 * timeout_s)``."""

    verifier: str = DEFAULT_VERIFIER
    workers: int = 2
    timeout_s: float = 10.0
    memory_mb: int = 2048
    cpu_time_s: int | None = None
    max_answer_chars: int = DEFAULT_MAX_CHARS
    length: LengthPenalty = field(default_factory=LengthPenalty)

    def __post_init__(self):
        resolve_verifier(self.verifier)  # fail at config time, naming the verifier
        for name in ("workers", "memory_mb", "max_answer_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.cpu_time_s is not None and self.cpu_time_s < 1:
            raise ValueError(f"cpu_time_s must be >= 1, got {self.cpu_time_s}")

    def make_pool(self) -> VerifierPool:
        return VerifierPool(
            self.workers, self.timeout_s, self.memory_mb, self.max_answer_chars, cpu_time_s=self.cpu_time_s
        )
