"""Built-in verifiers: ``math``, ``choice``, ``exact``, ``number``.

The verifier contract (built-in and user plug-ins alike)::

    def my_verifier(prediction: str, gold: str) -> bool: ...

``prediction`` is the extracted final answer (see :mod:`rewards.extract`: the text after ``◁/think▷``,
narrowed to the last ``\\boxed{…}`` or "answer is …" when present); ``gold`` is the dataset's
``answer``. Return True/False (or 1/0). Raise to refuse an input: the sample scores 0 and the
exception text is recorded. Model text is hostile: never ``eval``/``exec`` it, and never hand it to
``sympify``/``parse_expr`` (both call ``eval``). kvrl runs every call in a separate process with a
time and memory limit (:mod:`rewards.sandbox`), but a verifier should still refuse what it can't
handle quickly.
"""

from __future__ import annotations

import logging
import math as _math
import re
import unicodedata

# math-verify warns on every call that its signal-based timeouts are off; kvrl enforces time limits
# with worker processes instead (rewards.sandbox).
logging.getLogger("math_verify").setLevel(logging.ERROR)


class RejectedInput(ValueError):
    """The verifier refuses this input (too long, too nested, suspicious); the sample scores 0."""


# --- math ---------------------------------------------------------------------------------------

MATH_MAX_CHARS = 1000
MATH_MAX_DEPTH = 50
# Text that has no business in a math answer and only shows up in injection attempts.
_SUSPICIOUS = re.compile(r"__|['\"`]|\b(?:import|lambda|exec|eval|open|getattr|globals|locals)\b")
_EXPONENT_DIGITS = re.compile(r"(?:\^|\*\*)\s*\{?\s*\(?\s*(\d{4,})")
# a power inside an exponent: 9^{9^9}, 9^9^9, 9**9**9, 2^(3^4)
_POWER_TOWER = re.compile(r"\^\s*[{(][^{}()]*\^|\^\s*\w+\s*\^|\*\*\s*[\w.]+\s*\*\*|\*\*\s*\([^()]*\*\*")

DEFAULT_VERIFIER = "math"  # for rows without a verifier column, wherever rows are scored


def screen(text: str, max_chars: int = MATH_MAX_CHARS, max_depth: int = MATH_MAX_DEPTH) -> str:
    """Refuse text that is too long, too deeply nested, suspicious, or a power with a huge exponent."""
    if len(text) > max_chars:
        raise RejectedInput(f"answer longer than {max_chars} characters ({len(text)})")
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    if deepest > max_depth:
        raise RejectedInput(f"answer nested {deepest} levels deep (limit {max_depth})")
    if _SUSPICIOUS.search(text):
        raise RejectedInput("answer contains code-like text")
    if _POWER_TOWER.search(text) or _EXPONENT_DIGITS.search(text):
        raise RejectedInput("answer has a power tower or an exponent of 4+ digits")
    return text


def _latex_parse(text: str):
    from math_verify import LatexExtractionConfig, parse

    text = text.strip().strip("$").strip()
    # LaTeX extraction only: math-verify's plain-expression path runs sympy.parse_expr (eval).
    return parse(f"${text}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=None)


def verify_math(prediction: str, gold: str) -> bool:
    """Mathematical equivalence via math-verify + sympy: fractions, decimals, LaTeX, radicals, π and e,
    sets and intervals, ``x = 2`` against ``2``. Falls back to normalized text when gold won't parse."""
    from math_verify import verify

    screen(prediction)
    gold_parsed = _latex_parse(gold)
    if not gold_parsed:
        return normalize(prediction) == normalize(gold)
    pred_parsed = _latex_parse(prediction)
    if not pred_parsed:
        return normalize(prediction) == normalize(gold)
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


# --- exact --------------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """NFKC, casefold, drop ``$`` and a ``\\text{}`` wrapper, collapse spaces, strip end punctuation."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("$", "")
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", text)
    text = " ".join(text.split())
    return text.strip(" .!;:,")


def verify_exact(prediction: str, gold: str) -> bool:
    """Equal after :func:`normalize`."""
    return normalize(prediction) == normalize(gold)


# --- choice -------------------------------------------------------------------------------------

_GOLD_CHOICE = re.compile(r"^\(?([A-Za-z])\)?(?:\s*[.):\-]\s*|\s+|$)(.*)$", re.S)
_PRED_CHOICE = [
    re.compile(r"^(?:option|choice|answer)?\s*[:\-]?\s*\(?([A-Za-z])\)?[.)]?$", re.I),  # B, (b), Option B
    re.compile(r"^\(?([A-Z])\)?[.):]\s+\S", re.S),  # "B) blue", "B. blue"
]


def verify_choice(prediction: str, gold: str) -> bool:
    """Multiple choice. ``gold`` is a letter, optionally with the option text (``"B"``, ``"B) blue"``);
    the prediction may give the letter (``B``, ``(b)``, ``Option B``, ``B) blue``) or the option's text."""
    m = _GOLD_CHOICE.match(gold.strip())
    if not m:
        raise RejectedInput(f"gold {gold!r} does not start with an option letter")
    letter, option_text = m.group(1).upper(), m.group(2).strip()
    pred = prediction.strip()
    for pattern in _PRED_CHOICE:
        pm = pattern.match(pred)
        if pm:
            return pm.group(1).upper() == letter
    return bool(option_text) and normalize(pred) == normalize(option_text)


# --- number -------------------------------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+)?")
_TOLERANCE = re.compile(r"^(.*?)\s*(?:±|\+-|\+/-)\s*(.+)$")
NUMBER_REL_TOL = 1e-6


def parse_number(text: str) -> float:
    """The last number in text: ``42``, ``1,234.5``, ``1e-3``, ``3/4``, ``50%`` (= 50). No eval."""
    text = text.replace("\u2212", "-")
    found = [m.group(0) for m in _NUMBER.finditer(text) if any(c.isdigit() for c in m.group(0))]
    if not found:
        raise RejectedInput(f"no number in {text[:40]!r}")
    token = found[-1].replace(" ", "")
    if len(token) > 400:
        raise RejectedInput("number longer than 400 characters")
    num, _, den = token.partition("/")
    value = float(num.replace(",", "")) if num not in ("", "+", "-") else None
    if value is None:
        raise RejectedInput(f"no number in {text[:40]!r}")
    if den:
        if int(den) == 0:
            raise RejectedInput("division by zero")
        value /= int(den)
    return value


def verify_number(prediction: str, gold: str) -> bool:
    """The last number in the prediction equals gold within a tolerance: relative 1e-6 by default, or
    the absolute one gold states as ``3.14 ± 0.01`` (also ``+-``, ``+/-``)."""
    tol_match = _TOLERANCE.match(gold)
    if tol_match:
        target, abs_tol, rel_tol = parse_number(tol_match.group(1)), parse_number(tol_match.group(2)), 0.0
    else:
        target, abs_tol, rel_tol = parse_number(gold), 1e-12, NUMBER_REL_TOL
    value = parse_number(prediction)
    if not _math.isfinite(value):
        return False
    return _math.isclose(value, target, rel_tol=rel_tol, abs_tol=abs_tol)


BUILTIN_VERIFIERS = {
    DEFAULT_VERIFIER: verify_math,
    "choice": verify_choice,
    "exact": verify_exact,
    "number": verify_number,
}
