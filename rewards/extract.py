"""Answer extraction from Kimi-VL-Thinking responses: ``◁think▷ … ◁/think▷ answer``.

Rules (the contract of ``kvrl verify`` and of every reward):

- The answer is the text after the last ``◁/think▷``.
- A response that opens ``◁think▷`` and never closes it is *truncated*: it has no answer and scores 0.
- A response with no thinking tags is all answer.
- Within the answer, the last ``\\boxed{…}`` is taken when present, else the last "answer is …" phrase,
  else the whole answer, stripped.
- An over-long answer is cut to ``max_chars`` before it is searched, and the cut is recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runkit.tokens import THINK_CLOSE, THINK_OPEN

DEFAULT_MAX_CHARS = 20_000

_ANSWER_IS = re.compile(r"answer\s+is\s*[:：]?\s*(.+)", re.IGNORECASE)


@dataclass(frozen=True)
class Extraction:
    """What a response says its final answer is. ``final`` is None when there is none to score."""

    final: str | None
    truncated: bool = False
    note: str | None = None


def find_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` (or ``\\fbox{…}``) with balanced braces, else None. O(len)."""
    starts = [m.end() - 1 for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    closing: dict[int, int] = {}  # position of "{" -> position of its "}"
    stack: list[int] = []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            closing[stack.pop()] = i
    for brace in reversed(starts):
        if brace in closing:
            return text[brace + 1 : closing[brace]].strip()
    return None


def find_answer_phrase(text: str) -> str | None:
    """The last "answer is X" in the text: X up to the end of its line, without a trailing period."""
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    value = matches[-1].group(1).splitlines()[0].strip()
    value = re.sub(r"[.。]\s*$", "", value).strip()
    return value or None


def split_thinking(response: str) -> tuple[str | None, bool]:
    """(answer text, truncated) per the Kimi thinking format."""
    if THINK_CLOSE in response:
        return response.rsplit(THINK_CLOSE, 1)[1], False
    if THINK_OPEN in response:
        return None, True
    return response, False


def extract(response: str, max_chars: int = DEFAULT_MAX_CHARS) -> Extraction:
    answer, truncated = split_thinking(response)
    if truncated:
        return Extraction(None, truncated=True, note="thinking section was opened but never closed")
    note = None
    if len(answer) > max_chars:
        note = f"answer cut from {len(answer)} to {max_chars} characters"
        answer = answer[:max_chars]
    final = find_boxed(answer)
    if final is None:
        final = find_answer_phrase(answer)
    if final is None:
        final = answer.strip()
    return Extraction(final or None, note=note)
