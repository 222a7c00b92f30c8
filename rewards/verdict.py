"""Score one response against its gold answer with a verifier, in this process."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .extract import DEFAULT_MAX_CHARS, extract
from .registry import Verifier, resolve_scorer
from .styles import call
from .verifiers import DEFAULT_VERIFIER

EXTRACTED_SHOWN = 1000  # characters of the extracted answer kept in a Verdict


@dataclass
class Verdict:
    """The result ``kvrl verify`` prints and every reward is built from."""

    correct: bool
    extracted: str | None
    truncated: bool
    error: str | None
    score: float | None = None  # a graded verifier's score (the reward); None: correct as 1/0

    def __post_init__(self):
        if self.extracted is not None and len(self.extracted) > EXTRACTED_SHOWN:
            self.extracted = self.extracted[:EXTRACTED_SHOWN] + "…"

    def to_dict(self) -> dict:
        """``kvrl verify``'s object: ``correct, extracted, truncated, error``, and ``score`` for a graded
        verifier."""
        out = asdict(self)
        if out["score"] is None:
            del out["score"]
        return out


def verify_response(
    response: str,
    gold: str,
    verifier: str | Verifier = DEFAULT_VERIFIER,
    max_chars: int = DEFAULT_MAX_CHARS,
    *,
    prompt: str = "",
    row: dict | None = None,
    style: str | None = None,
    threshold: float = 1.0,
) -> Verdict:
    """Extract the answer from ``response`` and check it. Never raises for bad model output: a refusal
    or an exception inside the verifier gives ``correct=False`` with the reason in ``error``.

    ``verifier`` may be written to another framework's contract (``rewards/styles.py``; ``style`` or
    its ``@style`` suffix, else detected): it then gets the whole response, ``prompt`` (the question)
    and ``row`` (the data set row) as that framework passes them, and a graded score is kept in
    ``score`` and counts as correct from ``threshold`` on.

    This runs the verifier in the calling process, with no time or memory limit; the reward path
    uses :class:`rewards.sandbox.VerifierPool`, which adds both.
    """
    fn, style = resolve_scorer(verifier, style) if isinstance(verifier, str) else (verifier, style or "kvrl")
    if not isinstance(response, str):
        return Verdict(False, None, False, f"response is {type(response).__name__}, not text")
    ext = extract(response, max_chars=max_chars)
    if ext.truncated:
        return Verdict(False, None, True, None)
    if ext.final is None and style in ("kvrl", "kvrl_rich"):
        return Verdict(False, None, False, ext.note or "empty answer")
    try:
        result = call(
            fn, style, prediction=ext.final, response=response, gold=str(gold), prompt=prompt, row=row or {}
        )
    except Exception as e:  # a verifier that raises costs the sample, not the run
        return Verdict(False, ext.final, False, f"{type(e).__name__}: {e}"[:500])
    if isinstance(result, bool) or (style == "kvrl" and result in (0, 1)):
        return Verdict(bool(result), ext.final, False, ext.note)
    if style == "kvrl":
        return Verdict(False, ext.final, False, f"verifier returned {result!r}; expected a bool")
    if result is None:
        return Verdict(False, ext.final, False, "verifier gave no score (None): counted as 0", score=0.0)
    if not isinstance(result, int | float) or result != result:  # NaN is no score either
        return Verdict(False, ext.final, False, f"verifier returned {result!r}; expected a number")
    score = float(result)
    return Verdict(score >= threshold, ext.final, False, ext.note, score=score)
