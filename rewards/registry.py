"""Resolve a verifier named in config, a dataset row or on the command line.

A name is one of: a built-in (``math``, ``choice``, ``exact``, ``number``), a dotted path
``package.module:function``, or an entry point in the group ``kvrl.verifiers``; a ``@STYLE`` suffix
(``rewards/styles.py``: ``kvrl``, ``kvrl_rich``, ``verl``, ``trl``, ``openrlhf``) says how to call it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib import metadata

from .styles import STYLES, StyleError, detect_style
from .verifiers import BUILTIN_VERIFIERS

ENTRY_POINT_GROUP = "kvrl.verifiers"
Verifier = Callable[[str, str], bool]


class UnknownVerifier(ValueError):
    pass


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def split_style(spec: str) -> tuple[str, str | None]:
    """``'pkg.mod:fn@verl'`` -> ``('pkg.mod:fn', 'verl')``; no suffix -> style None (detected)."""
    name, at, style = spec.strip().rpartition("@")
    if not at:
        return spec.strip(), None
    if style not in STYLES:
        raise UnknownVerifier(
            f"verifier {spec!r}: unknown style {style!r} after '@'; one of {', '.join(STYLES)}"
        )
    return name, style


def resolve_scorer(spec: str, style: str | None = None) -> tuple[Callable, str]:
    """The function ``spec`` names and the style to call it in: ``spec``'s ``@style``, else ``style``
    (``rewards.verifier_style``; None or ``auto``: detected from its parameters). Built-ins are kvrl's."""
    name, own = split_style(spec) if isinstance(spec, str) else (spec, None)
    fn = resolve_verifier(name)
    if name in BUILTIN_VERIFIERS:
        return fn, "kvrl"
    chosen = own or (style if style not in (None, "auto") else None)
    try:
        return fn, chosen or detect_style(fn, name)
    except StyleError as e:
        raise UnknownVerifier(str(e)) from e


def resolve_verifier(spec: str) -> Verifier:
    """The verifier function ``spec`` names; :class:`UnknownVerifier` lists the valid names if none."""
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownVerifier(f"verifier name must be a non-empty string, got {spec!r}")
    spec = split_style(spec)[0]
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
