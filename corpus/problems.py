"""Prompt datasets: rows of ``id, question, answer`` with optional ``images``, ``difficulty``, ``verifier``.

Files and image entries are read as :mod:`corpus.rows` describes. A bad row raises :class:`DataError`
naming the file, the row and the reason, or, with ``skip_bad_rows``, is skipped and counted by reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corpus.rows import PROMPTS, DataError, data_file, image_entry, read_rows
from curriculum import DifficultyError, check_difficulty
from rewards import UnknownVerifier, resolve_verifier

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    path: str = ""
    skip_bad_rows: bool = False  # skip and count bad rows instead of stopping at the first
    check_images: bool = True  # decode every image at load time


@dataclass
class Problem:
    id: str
    question: str
    answer: str
    images: list[Any] = field(default_factory=list)
    difficulty: float | None = None
    verifier: str | None = None
    row: int = 0
    columns: dict[str, Any] = field(default_factory=dict)  # the row as read, for writing it back


@dataclass
class ProblemSet:
    source: str
    problems: list[Problem]
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.problems)


def parse_row(raw: Any, source: Path, row: int, check_images: bool = True) -> Problem:
    where = f"{source}, row {row}"
    if isinstance(raw, Exception):
        raise raw
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object with id, question, answer")
    for key in ("question", "answer"):
        if key not in raw or raw[key] is None:
            raise DataError(f"{where}: missing column {key!r}")
    question, answer = raw["question"], raw["answer"]
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: question must be non-empty text")
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise DataError(f"{where}: answer must be text or a number, got {type(answer).__name__}")
    if isinstance(answer, str) and not answer.strip():
        raise DataError(f"{where}: answer is empty (nothing to verify against)")
    images = raw.get("images") or []
    if not isinstance(images, list):
        images = [images]
    images = [image_entry(im, source.parent, where, i, check_images) for i, im in enumerate(images)]
    difficulty = raw.get("difficulty")
    if difficulty is not None:
        try:
            difficulty = check_difficulty(difficulty, str(source), row)
        except DifficultyError as e:
            raise DataError(str(e)) from e
    verifier = raw.get("verifier") or None
    if verifier is not None:
        try:
            resolve_verifier(verifier)
        except UnknownVerifier as e:
            raise DataError(f"{where}: {e}") from e
    pid = raw.get("id", row)
    return Problem(str(pid), question, str(answer), images, difficulty, verifier, row, dict(raw))


def load_problems(path: str | Path, skip_bad_rows: bool = False, check_images: bool = True) -> ProblemSet:
    """Read and validate a prompt dataset (see the module docstring). A path that does not exist, a folder
    of several data files, or a file of SFT conversations raises a :class:`DataError` before any row."""
    path = data_file(path, PROMPTS)
    problems, skipped, seen = [], Counter(), {}
    for row, raw in read_rows(path, PROMPTS):
        try:
            problem = parse_row(raw, path, row, check_images)
            if problem.id in seen:
                raise DataError(
                    f"{path}, row {row}: duplicate id {problem.id!r} (first at row {seen[problem.id]})"
                )
        except DataError as e:
            if not skip_bad_rows:
                raise
            reason = str(e).split(": ", 1)[-1].split(" (")[0]
            skipped[reason] += 1
            log.warning("skipping %s", e)
            continue
        seen[problem.id] = row
        problems.append(problem)
    if not problems:
        raise DataError(
            f"{path}: no usable rows" + (f" ({sum(skipped.values())} skipped)" if skipped else "")
        )
    if skipped:
        log.warning("%s: skipped %d bad rows: %s", path, sum(skipped.values()), dict(skipped))
    return ProblemSet(str(path), problems, skipped)
