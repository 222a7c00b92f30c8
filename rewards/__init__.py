"""Rewards: answer extraction, verifiers (built-in and plug-in), the k1.5 length reward, sandboxing.

Imports without torch, vllm or ray, so a verifier can be tried in a plain Python shell::

    >>> from rewards import verify_response
    >>> verify_response("◁think▷ 1/2 + 1/4 ◁/think▷ \\\\boxed{\\\\frac{3}{4}}", "0.75").correct
    True
"""

from .config import RewardConfig
from .extract import THINK_CLOSE, THINK_OPEN, Extraction, extract
from .length import LengthPenalty, length_reward, total_rewards
from .registry import ENTRY_POINT_GROUP, UnknownVerifier, resolve_verifier
from .sandbox import Task, VerifierPool, problem_task
from .verdict import Verdict, verify_response
from .verifiers import BUILTIN_VERIFIERS, DEFAULT_VERIFIER, RejectedInput

__all__ = [
    "BUILTIN_VERIFIERS",
    "DEFAULT_VERIFIER",
    "ENTRY_POINT_GROUP",
    "THINK_CLOSE",
    "THINK_OPEN",
    "Extraction",
    "LengthPenalty",
    "RejectedInput",
    "RewardConfig",
    "Task",
    "UnknownVerifier",
    "Verdict",
    "VerifierPool",
    "extract",
    "length_reward",
    "problem_task",
    "resolve_verifier",
    "total_rewards",
    "verify_response",
]
