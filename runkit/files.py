"""Files and directories that appear whole or not at all: written beside their name, renamed into place."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
