"""Reading data-set files row by row, with errors that name the file and the row.

Files: ``.jsonl`` (read here line by line, so errors name the line), or anything ``datasets`` reads
(parquet, csv, a ``save_to_disk`` directory ...; rows are then counted from 1). Image entries are
paths (relative to the data file's folder), raw bytes, or ``{"bytes": ..., "path": ...}`` as
``datasets.Image`` stores them.

:func:`data_file` checks a path before anything is read: one that does not exist, a folder of several
data files (``kvrl data synth`` writes prompts and SFT conversations side by side) and a file of the
other kind (SFT conversations where prompts are expected, or the reverse) each raise a one-line
:class:`DataError` that names the path and what was expected.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kimivl.processing import ImageInputError, load_image
from runkit.files import jsonl_rows

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset row kvrl cannot use; the message names the file and row."""


@dataclass(frozen=True)
class Kind:
    """A kind of data set, told apart by the column every row of it has."""

    name: str
    columns: str  # what its rows hold, for messages
    key: str  # the column that marks a row as this kind

    def __str__(self) -> str:
        return f"{self.name} ({self.columns})"


PROMPTS = Kind("prompts", "rows of id, question, answer", "question")
CONVERSATIONS = Kind("SFT conversations", "rows with a 'messages' list", "messages")
KINDS = (PROMPTS, CONVERSATIONS)

READERS = {".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
DATA_SUFFIXES = (".jsonl", *READERS)
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # written by save_to_disk
_SHARD = re.compile(r"-\d+-of-\d+$")  # train-00000-of-00004.parquet: one split cut into shards
_LISTED = 8  # data files a message names before "and N more"


def kind_of(columns: Iterable[str]) -> Kind | None:
    """The kind whose marking column is among ``columns``; ``None`` when none or both are."""
    columns = set(columns)
    kinds = [k for k in KINDS if k.key in columns]
    return kinds[0] if len(kinds) == 1 else None


def check_kind(columns: Iterable[str], path: Path, expected: Kind) -> None:
    """Raise a :class:`DataError` when ``columns`` mark another kind than ``expected``."""
    found = kind_of(columns)
    if found is not None and found != expected:
        raise DataError(f"{path} holds {found}; expected {expected}")


def _columns(path: Path) -> set[str] | None:
    """The columns of a data file's first row, read cheaply; ``None`` when they cannot be told."""
    try:
        if path.suffix in (".jsonl", ".json"):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        return set(row) if isinstance(row, dict) else None
        elif path.suffix == ".csv":
            with open(path, encoding="utf-8") as f:
                return {c.strip().strip('"') for c in f.readline().split(",")}
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return set(pq.read_schema(path).names)
    except (OSError, ValueError, ImportError):
        return None
    return None


def _folder_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix in DATA_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def data_file(path: str | Path, expected: Kind) -> Path:
    """``path`` checked to hold a data set of kind ``expected``: the file to read (the one data file of a
    folder that holds one), a ``save_to_disk`` folder, or a folder of one split's shards. Anything else
    raises a one-line :class:`DataError` naming the path and what was expected."""
    path = Path(path)
    want = f"a file of {expected}"
    if not path.exists():
        raise DataError(f"{path} does not exist; expected {want}")
    if not path.is_dir():
        if path.suffix not in DATA_SUFFIXES:
            raise DataError(
                f"{path} is a {path.suffix or 'suffix-less'} file; expected {want} "
                f"as {', '.join(DATA_SUFFIXES)} or a save_to_disk folder"
            )
        columns = _columns(path)
        if columns is not None:
            check_kind(columns, path, expected)
        return path
    if any((path / marker).exists() for marker in SAVED_MARKERS):
        return path
    files = _folder_files(path)
    if not files:
        suffixes = ", ".join(DATA_SUFFIXES)
        raise DataError(f"{path} is a folder with no data files ({suffixes}); expected {want}")
    if len(files) == 1:
        log.info("%s: reading its one data file, %s", path, files[0])
        return data_file(files[0], expected)
    if len({f.suffix for f in files}) == 1 and all(_SHARD.search(f.stem) for f in files):
        return path  # one data set cut into shards: datasets reads them together
    names = [str(f.relative_to(path)) for f in files]
    listed = ", ".join(names[:_LISTED])
    if len(names) > _LISTED:
        listed += f" and {len(names) - _LISTED} more"
    fitting = [f for f in files if kind_of(_columns(f) or ()) == expected]
    # train files first, then the plainest name: train.jsonl before train.difficulty.jsonl
    fitting.sort(key=lambda f: ("train" not in f.name, len(f.parts), len(f.name), f.name))
    advice = f", e.g. {fitting[0]}" if fitting else f"; none of these holds {expected.name}"
    raise DataError(f"{path} is a folder holding {listed}; give one file of {expected}{advice}")


def _reason(e: BaseException) -> str:
    """The first line of an exception from ``datasets``, or of the error that caused it (the cause names
    the parse error; ``DatasetGenerationError`` itself only says that generation failed)."""
    inner = e.__cause__ or e
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[0][:200]}" if text else type(inner).__name__


def read_rows(path: Path, expected: Kind | None = None) -> Iterator[tuple[int, Any]]:
    """(row number, row) per row of ``path``; a row that is not valid JSON comes as a ``DataError``.

    With ``expected``, a file whose first row marks the other kind raises a :class:`DataError`;
    give paths through :func:`data_file` first, which also checks folders."""
    if path.suffix == ".jsonl":
        yield from _read_jsonl(path, expected)
        return
    import datasets

    saved = path.is_dir() and any((path / marker).exists() for marker in SAVED_MARKERS)
    reader = "save_to_disk folder" if saved else "folder of shards" if path.is_dir() else None
    reader = reader or READERS.get(path.suffix, "data set")
    quiet = logging.getLogger("datasets")  # it logs a parse error before raising it: ours says it once
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        if saved:
            ds = datasets.load_from_disk(str(path))
        elif path.suffix in READERS:
            ds = datasets.load_dataset(READERS[path.suffix], data_files=str(path))
        else:
            ds = datasets.load_dataset(str(path))
    except Exception as e:  # datasets raises many types (ArrowInvalid, DatasetGenerationError, ...)
        raise DataError(f"{path}: could not be read as {reader} ({_reason(e)})") from e
    finally:
        quiet.setLevel(level)
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: has splits {list(ds)}; point at one split's files")
        ds = ds["train"]
    if expected is not None:
        check_kind(ds.column_names, path, expected)
    try:
        yield from enumerate(ds, start=1)
    except Exception as e:
        raise DataError(f"{path}: could not be read as {reader} ({_reason(e)})") from e


def _read_jsonl(path: Path, expected: Kind | None) -> Iterator[tuple[int, Any]]:
    checked = expected is None
    try:
        for n, row in jsonl_rows(path):
            if isinstance(row, json.JSONDecodeError):
                yield n, DataError(f"{path}, row {n}: not valid JSON ({row.msg})")
                continue
            if not checked and isinstance(row, dict):
                check_kind(row, path, expected)
                checked = True
            yield n, row
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason}); expected jsonl") from e
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from e


def image_entry(entry: Any, base: Path, where: str, index: int, check: bool) -> Any:
    if isinstance(entry, dict):
        entry = entry.get("bytes") or entry.get("path")
    if isinstance(entry, str):
        # absolute: an actor or verifier process may run in another working directory (every worker of
        # a Ray cluster the driver joined does), and the path must name the same file there
        path = Path(entry) if Path(entry).is_absolute() else base / entry
        entry = str(path.absolute())
    elif not isinstance(entry, bytes | bytearray):
        raise DataError(f"{where}: images[{index}] is a {type(entry).__name__}; expected a path or bytes")
    if check:
        try:
            load_image(entry, index)
        except ImageInputError as e:
            raise DataError(f"{where}: {e}") from e
    return entry
