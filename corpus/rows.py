"""Reading data-set files row by row, with errors that name the file and the row.

Files: ``.jsonl`` (read here line by line, so errors name the line), or anything ``datasets`` reads
(parquet, csv, a ``save_to_disk`` directory ...; rows are then counted from 1). Image entries are
paths (relative to the data file's folder), raw bytes, or ``{"bytes": ..., "path": ...}`` as
``datasets.Image`` stores them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kimivl.processing import ImageInputError, load_image


class DataError(ValueError):
    """A dataset row kvrl cannot use; the message names the file and row."""


def read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    yield n, DataError(f"{path}, row {n}: not valid JSON ({e.msg})")
        return
    import datasets

    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
        ds = datasets.load_from_disk(str(path))
    else:
        kind = {".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}.get(path.suffix)
        ds = datasets.load_dataset(kind, data_files=str(path)) if kind else datasets.load_dataset(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: has splits {list(ds)}; point at one split's files")
        ds = ds["train"]
    for n, row in enumerate(ds, start=1):
        yield n, row


def image_entry(entry: Any, base: Path, where: str, index: int, check: bool) -> Any:
    if isinstance(entry, dict):
        entry = entry.get("bytes") or entry.get("path")
    if isinstance(entry, str):
        path = Path(entry) if Path(entry).is_absolute() else base / entry
        entry = str(path)
    elif not isinstance(entry, bytes | bytearray):
        raise DataError(f"{where}: images[{index}] is a {type(entry).__name__}; expected a path or bytes")
    if check:
        try:
            load_image(entry, index)
        except ImageInputError as e:
            raise DataError(f"{where}: {e}") from e
    return entry
