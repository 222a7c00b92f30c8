"""Verify many responses from a jsonl file: one ``{"response", "answer"[, "verifier"]}`` object a line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from runkit.files import jsonl_rows

from .sandbox import Task, VerifierPool
from .verdict import Verdict

ROWS = '{"response", "answer"[, "verifier"]} objects'


def jsonl_file(path: str | Path) -> Path:
    """``path`` checked to be a file: one that does not exist (``FileNotFoundError``) or a folder
    (``ValueError``) raises a one-line error naming it and what was expected (a folder's: its jsonl files)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; expected a jsonl file of {ROWS}")
    if path.is_dir():
        names = sorted(p.name for p in path.glob("*.jsonl") if p.is_file())
        if not names:
            raise ValueError(f"{path} is a folder with no .jsonl files; expected a jsonl file of {ROWS}")
        listed = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        raise ValueError(f"{path} is a folder holding {listed}; give one jsonl file of {ROWS}")
    return path


def read_tasks(path: str | Path, default_verifier: str) -> Iterator[tuple[int, Task | str]]:
    """(line number, Task) per good line, (line number, reason) per malformed one; blank lines skipped."""
    path = jsonl_file(path)
    for n, row in jsonl_rows(path, errors="replace"):
        if isinstance(row, json.JSONDecodeError):
            yield n, f"{path}:{n}: not valid JSON ({row.msg})"
            continue
        if not isinstance(row, dict):
            yield n, f"{path}:{n}: expected a JSON object"
            continue
        missing = [k for k in ("response", "answer") if k not in row]
        if missing:
            yield n, f"{path}:{n}: missing key {missing[0]!r}"
            continue
        verifier = row.get("verifier") or default_verifier
        yield n, Task(str(row["response"]), str(row["answer"]), str(verifier))


def verify_jsonl(path: str | Path, default_verifier: str, pool: VerifierPool) -> list[dict]:
    """One result dict per non-blank line, in file order: the line number plus the verdict's fields."""
    entries = list(read_tasks(path, default_verifier))
    tasks = [t for _, t in entries if isinstance(t, Task)]
    verdicts = iter(pool.verify(tasks))
    out = []
    for n, item in entries:
        verdict = next(verdicts) if isinstance(item, Task) else Verdict(False, None, False, item)
        out.append({"line": n, **verdict.to_dict()})
    return out
