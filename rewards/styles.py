"""Reward functions written for other frameworks, called as those frameworks call them.

A verifier's *style* says how kvrl calls it and reads what it returns:

=============  ==============================================================  =========================
style          called as                                                       returns
=============  ==============================================================  =========================
``kvrl``       ``verify(prediction, gold)``                                    bool (or 0/1)
``kvrl_rich``  ``verify(prediction, gold, response=..., row=...)``             bool or a float score
``verl``       ``compute_score(data_source, solution_str, ground_truth,       float, or a dict with
               extra_info)``                                                   ``"score"``
``trl``        ``reward_func(completions, prompts=..., **columns)``            list of float or None
``openrlhf``   ``reward_func(queries, prompts, labels)``                       dict with ``"rewards"``
=============  ==============================================================  =========================

What each receives (``docs/verifiers.md`` says the same for users):

- ``prediction``: the extracted answer (text after ``◁/think▷``, then the last ``\\boxed{}`` ...);
  every other style gets the **whole response**, its thinking section and tags included, as the
  engine decoded it (special tokens that vLLM skips are not in it).
- ``row`` / verl's ``extra_info`` / TRL's columns: the data set row as read (``id``, ``question``,
  ``answer``, ``difficulty``, any other column; ``images`` left out). verl's ``data_source`` is the
  row's ``data_source`` column, else ``"kvrl"``; its ``extra_info`` is the row's ``extra_info``
  column when it is a dict, else the row.
- TRL: one completion at a time, in TRL's conversational form (``[{"role": "assistant",
  "content": response}]``), ``prompts`` as ``[[{"role": "user", "content": question}]]``, each row
  column as a one-element list, ``completion_ids`` and ``trainer_state`` as None (kvrl has no TRL
  trainer). A ``None`` score ("does not apply") counts as 0, with a note.
- OpenRLHF: ``queries`` is the question and the response, ``prompts`` the question, ``labels`` the
  gold answer, each a one-element list; ``rewards`` may be a tensor or a list.

A response whose thinking section never closes is truncated and scores 0 before any verifier sees it,
in every style. Batch-style functions (TRL, OpenRLHF) are called with one sample, so the time limit
(``rewards.timeout_s``) counts per sample as for kvrl's own. A score counts as correct (accuracy,
curriculum success rates, the length reward's split) when it is at least ``rewards.correct_threshold``
(1.0: full marks); the reward itself is the score.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

STYLES = ("kvrl", "kvrl_rich", "verl", "trl", "openrlhf")


class StyleError(ValueError):
    """A verifier whose style cannot be told, or whose result does not fit its style."""


def _params(fn: Callable) -> tuple[list[str], bool]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature
        return [], True
    names = [p.name for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return names, var_kw


def detect_style(fn: Callable, name: str = "") -> str:
    """The style ``fn``'s parameter names declare; :class:`StyleError` when none or several fit."""
    names, _ = _params(fn)
    found = set(names)
    fits = []
    if {"data_source", "solution_str", "ground_truth"} <= found:
        fits.append("verl")
    if names[:1] == ["completions"]:
        fits.append("trl")
    if {"queries", "prompts", "labels"} <= found:
        fits.append("openrlhf")
    if {"response", "row"} & found and len(names) >= 2:
        fits.append("kvrl_rich")
    if not fits and len(names) >= 2:
        fits.append("kvrl")
    if len(fits) != 1:
        what = f"fits {' and '.join(fits)}" if fits else "fits none"
        raise StyleError(
            f"verifier {name or getattr(fn, '__name__', fn)!r} with parameters ({', '.join(names)}) {what} "
            f"of the styles ({', '.join(STYLES)}): name it with '@STYLE' (e.g. 'pkg.mod:fn@verl') or set "
            "rewards.verifier_style"
        )
    return fits[0]


def _number(value: Any, style: str) -> float | None:
    if value is None:
        return None
    if hasattr(value, "item"):  # a tensor or numpy scalar
        value = value.item()
    if isinstance(value, int | float):  # bools too
        return float(value)
    raise StyleError(f"a {style}-style verifier returned {type(value).__name__} {value!r}; expected a number")


def _first(values: Any, style: str, key: str) -> Any:
    if hasattr(values, "tolist"):
        values = values.tolist()
    if not isinstance(values, list | tuple) or len(values) != 1:
        raise StyleError(
            f"a {style}-style verifier returned {key}={values!r}; expected one value for one sample"
        )
    return values[0]


def call(
    fn: Callable, style: str, *, prediction: str | None, response: str, gold: str, prompt: str, row: dict
) -> float | bool | None:
    """Call ``fn`` in ``style``; its score (a bool for kvrl's own styles' True/False), or None for
    TRL's "no score"."""
    row = {k: v for k, v in row.items() if k != "images"}
    if style == "kvrl":
        return fn(prediction, gold)
    if style == "kvrl_rich":
        return fn(prediction, gold, response=response, row=row)
    if style == "verl":
        extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else row
        out = fn(
            data_source=row.get("data_source", "kvrl"),
            solution_str=response,
            ground_truth=gold,
            extra_info=extra,
        )
        if isinstance(out, dict):
            if "score" not in out:
                raise StyleError(f"a verl-style verifier returned a dict without 'score': keys {sorted(out)}")
            out = out["score"]
        return _number(out, style)
    if style == "trl":
        names, var_kw = _params(fn)
        columns = {k: [v] for k, v in row.items() if var_kw or k in names}
        columns.update(
            prompts=[[{"role": "user", "content": prompt}]], completion_ids=None, trainer_state=None
        )
        if not var_kw:
            columns = {k: v for k, v in columns.items() if k in names}
        out = fn([[{"role": "assistant", "content": response}]], **columns)
        return _number(_first(out, style, "the list"), style)
    if style == "openrlhf":
        out = fn(queries=[prompt + response], prompts=[prompt], labels=[gold])
        if not isinstance(out, dict) or "rewards" not in out:
            raise StyleError(
                f"an openrlhf-style verifier returned {type(out).__name__}; expected a dict with 'rewards'"
            )
        return _number(_first(out["rewards"], style, "rewards"), style)
    raise StyleError(f"unknown verifier style {style!r}; one of {', '.join(STYLES)}")
