"""Files and directories that appear whole or not at all (written beside their name, renamed into
place), and jsonl read line by line."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A path beside ``path`` (``<name>.partial``) to write one file or one directory into.

    When the block ends normally it takes the place of ``path`` in one rename (an old directory is
    removed first: a rename cannot replace a non-empty one); when it raises, SIGTERM's exception
    included, it is removed and ``path`` stays as it was. A reader never sees half a file.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    _remove(partial)
    try:
        yield partial
    except BaseException:
        _remove(partial)
        raise
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    os.replace(partial, path)


def atomic_write(path: str | Path, text: str) -> None:
    """``text`` into ``path`` through :func:`replacing`: readers see the old file or the new one."""
    with replacing(path) as partial:
        partial.write_text(text, encoding="utf-8")


def jsonl_rows(path: str | Path, errors: str = "strict") -> Iterator[tuple[int, Any]]:
    """(line number, object) per non-blank line of a jsonl file; a line that is not JSON comes as its
    ``json.JSONDecodeError`` instead, for the caller to report with the file and line."""
    with open(path, encoding="utf-8", errors=errors) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                yield n, e
