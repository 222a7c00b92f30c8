"""Resolve a verifier named in config, a dataset row or on the command line.

A name is one of: a built-in (``math``, ``choice``, ``exact``, ``number``), a dotted path
``package.module:function``, or an entry point in the group ``kvrl.verifiers``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib import metadata

from .verifiers import BUILTIN_VERIFIERS

ENTRY_POINT_GROUP = "kvrl.verifiers"
Verifier = Callable[[str, str], bool]


class UnknownVerifier(ValueError):
    pass


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def resolve_verifier(spec: str) -> Verifier:
    """The verifier function ``spec`` names; :class:`UnknownVerifier` lists the valid names if none."""
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownVerifier(f"verifier name must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec in BUILTIN_VERIFIERS:
        return BUILTIN_VERIFIERS[spec]
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise UnknownVerifier(f"verifier {spec!r}: cannot import module {module_name!r} ({e})") from e
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise UnknownVerifier(f"verifier {spec!r}: module {module_name!r} has no function {attr!r}")
        return fn
    plugins = _entry_points()
    if spec in plugins:
        fn = plugins[spec].load()
        if not callable(fn):
            raise UnknownVerifier(f"verifier entry point {spec!r} is not callable")
        return fn
    raise UnknownVerifier(
        f"unknown verifier {spec!r}: use a built-in ({', '.join(BUILTIN_VERIFIERS)}), "
        f"'package.module:function', or an entry point in group {ENTRY_POINT_GROUP!r} "
        f"(installed: {', '.join(sorted(plugins)) or 'none'})"
    )
