"""Curriculum and prioritized sampling (Kimi-VL sec. 2.4, Kimi k1.5 sec. 2.3.4).

Imports without vLLM, Ray or torch.
"""

from .difficulty import (
    DifficultyError,
    accuracy_by_level,
    check_difficulty,
    difficulty_from_outcomes,
    easy_to_hack,
)
from .prioritized import PrioritizedSampler
from .schedule import CurriculumConfig, CurriculumSampler, Stage, admitted, stage_index

__all__ = [
    "CurriculumConfig",
    "CurriculumSampler",
    "DifficultyError",
    "PrioritizedSampler",
    "Stage",
    "accuracy_by_level",
    "admitted",
    "check_difficulty",
    "difficulty_from_outcomes",
    "easy_to_hack",
    "stage_index",
]
