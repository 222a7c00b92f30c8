"""Typed configs: YAML files plus dotted ``key=value`` overrides, validated against dataclasses.

Each component keeps its own config dataclass next to its code; a stage's config nests them. pydantic
checks the values. An unknown key or a value of the wrong type is a :class:`ConfigError` that names the
dotted key, and the file when the value came from one::

    cfg = load_config(RLConfig, "configs/tiny/rl.yaml", ["trainer.iterations=5", "rewards.verifier=math"])
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import TypeAdapter
from pydantic_core import SchemaValidator, ValidationError, core_schema

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that kvrl cannot use; the message names the key."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a", "b", "c"], value parsed as YAML: 3, 0.1, true, [1, 2], text)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: cannot parse value {raw!r} ({e})") from e
    return key.strip().split("."), value


def merge_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """``schema`` from the YAML at ``path`` (optional) with dotted ``key=value`` overrides on top.

    An error at a key that an override set, or set something inside, names the key alone; any other
    one starts with the file, so that the user knows which of the two to edit."""
    overrides = list(overrides or [])
    data = merge_overrides(read_yaml(path) if path is not None else {}, overrides)
    set_by_override = [tuple(parse_override(item)[0]) for item in overrides]
    return _build(schema, data, None if path is None else str(path), set_by_override)


def build(schema: type[T], data: Any) -> T:
    """Instantiate dataclass ``schema`` from nested dicts, checking every key and value."""
    return _build(schema, data, None, [])


def to_dict(cfg: Any) -> dict:
    """A config dataclass as plain nested dicts (for run_info.json and logging)."""
    return dataclasses.asdict(cfg)


def _build(schema: type[T], data: Any, source: str | None, set_by_override: Sequence[tuple]) -> T:
    try:
        return _validator(schema).validate_python(data)
    except ValidationError as e:
        lines = []
        for err in e.errors(include_url=False):
            loc = err["loc"]
            touched = any(p[: len(loc)] == loc or loc[: len(p)] == p for p in set_by_override)
            where = f"{source}: " if source is not None and not touched else ""
            lines.append(where + _describe(schema, err))
        raise ConfigError("\n".join(lines)) from e


# A config file is typed by hand, so its values are taken as written: no "yes" for true, no 2.0 or "2"
# for 2, no 3 for "3". A float does take an int, and text such as "1e-3" that YAML 1.1 (PyYAML) reads as
# a string because it has no dot.
_STRICT = frozenset({"int", "bool", "str"})
# Keys of a core schema whose values are data, not schemas (a default could look like one).
_DATA_KEYS = frozenset({"cls", "config", "default", "expected", "metadata", "ref", "serialization"})


@functools.cache
def _validator(schema: type) -> SchemaValidator:
    """pydantic's validator for the dataclass, tightened node by node. ``TypeAdapter(config=...)`` is
    refused for a dataclass, and its ``strict`` would also refuse a mapping for a nested dataclass."""
    return SchemaValidator(_tighten(TypeAdapter(schema).core_schema))


def _tighten(node: Any) -> Any:
    if isinstance(node, list | tuple):
        return type(node)(_tighten(n) for n in node)
    if not isinstance(node, dict):
        return node
    out = {k: v if k in _DATA_KEYS else _tighten(v) for k, v in node.items()}
    kind = out.get("type")
    if kind in _STRICT:
        out["strict"] = True
    elif kind == "float":
        return core_schema.no_info_before_validator_function(_number_from_text, {**out, "strict": True})
    elif kind == "dataclass":
        out["strict"] = False  # a mapping fills it
    elif kind == "dataclass-args":
        out["extra_behavior"] = "forbid"
    elif kind == "union":  # one error at the key, rather than one per member tagged with its type
        names = [_schema_name(c[0] if isinstance(c, tuple) else c) for c in out["choices"]]
        out["custom_error_type"] = "config_union"
        out["custom_error_message"] = f"expected {' or '.join(names)}"
    return out


def _number_from_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _schema_name(node: dict) -> str:
    if "cls" in node:
        return node["cls"].__name__
    if node["type"].startswith("function-"):
        return _schema_name(node["schema"])
    return _WHAT.get(f"{node['type'].replace('str', 'string')}_type", node["type"])


_WHAT = {
    "int_type": "an integer",
    "bool_type": "true or false",
    "float_type": "a number",
    "string_type": "text",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "dataclass_type": "a mapping",
}


def _describe(schema: type, err: dict) -> str:
    loc, kind, got = err["loc"], err["type"], err["input"]
    key = _dotted(loc)
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        valid = _keys_at(schema, loc[:-1])
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        parent = _dotted(loc[:-1])
        hint = f"did you mean {(parent + '.' if parent else '') + near[0]!r}? " if near else ""
        return f"unknown config key {key!r}; {hint}valid keys here: {', '.join(valid)}"
    if kind in ("value_error", "assertion_error"):  # raised by a __post_init__: name its section
        text = str(err["ctx"]["error"])
    elif kind == "literal_error":
        text = f"{got!r} is not one of {err['ctx']['expected']}"
    elif kind in ("missing", "missing_argument"):
        text = "required, but not set"
    elif kind == "config_union":
        text = f"{err['msg']}, got {got!r}"
    elif kind in _WHAT:
        text = f"expected {_WHAT[kind]}, got {got!r}"
    else:
        text = f"{err['msg']} (got {got!r})"
    return f"{key or schema.__name__}: {text}"


def _dotted(loc: tuple) -> str:
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += f".{part}" if key and not part.startswith("[") else part
    return key


def _keys_at(schema: type, loc: tuple) -> list[str]:
    """The keys the dataclass at ``loc`` takes, to list them beside an unknown one."""
    tp: Any = schema
    for part in loc:
        tp = _optional_of(tp)
        if dataclasses.is_dataclass(tp) and isinstance(part, str):
            tp = typing.get_type_hints(tp).get(part)
        elif typing.get_origin(tp) in (list, tuple, dict) and typing.get_args(tp):
            tp = typing.get_args(tp)[1 if typing.get_origin(tp) is dict else 0]
        else:
            return []
    tp = _optional_of(tp)
    return sorted(f.name for f in dataclasses.fields(tp) if f.init) if dataclasses.is_dataclass(tp) else []


def _optional_of(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp
