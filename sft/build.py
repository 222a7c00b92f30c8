"""Rejection sampling for SFT data (Kimi k1.5 sec. 2.3.1 and 2.4): keep verified-correct responses.

Pure selection and row building; ``sft/rejection.py`` runs the engine and the verifiers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Candidate:
    text: str
    num_tokens: int
    correct: bool
    finished: bool  # ended with the stop token (a response cut at max_tokens never learned to stop)


def keep(candidates: list[Candidate], shortest: bool = False) -> list[int]:
    """Indices of the candidates to keep: correct and finished; with ``shortest``, only the shortest of
    those (k1.5's shortest rejection sampling, which shortens responses before long2short RL).
    Ties go to the earliest sample."""
    good = [i for i, c in enumerate(candidates) if c.correct and c.finished]
    if shortest and good:
        return [min(good, key=lambda i: (candidates[i].num_tokens, i))]
    return good


def sft_row(row_id: str, question: str, images: list[str], response: str, **extra: Any) -> dict[str, Any]:
    """One SFT dataset row (``sft/data.py`` format): the user turn with its images, then the response."""
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    return {
        "id": row_id,
        "messages": [{"role": "user", "content": content}, {"role": "assistant", "content": response}],
        "images": list(images),
        **extra,
    }
