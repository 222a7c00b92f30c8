"""Score one response against its gold answer with a verifier, in this process."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .extract import DEFAULT_MAX_CHARS, extract
from .registry import Verifier, resolve_verifier
from .verifiers import DEFAULT_VERIFIER

EXTRACTED_SHOWN = 1000  # characters of the extracted answer kept in a Verdict


@dataclass
class Verdict:
    """The result ``kvrl verify`` prints and every reward is built from."""

    correct: bool
    extracted: str | None
    truncated: bool
    error: str | None

    def __post_init__(self):
        if self.extracted is not None and len(self.extracted) > EXTRACTED_SHOWN:
            self.extracted = self.extracted[:EXTRACTED_SHOWN] + "…"

    def to_dict(self) -> dict:
        return asdict(self)


def verify_response(
    response: str, gold: str, verifier: str | Verifier = DEFAULT_VERIFIER, max_chars: int = DEFAULT_MAX_CHARS
) -> Verdict:
    """Extract the answer from ``response`` and check it. Never raises for bad model output: a refusal
    or an exception inside the verifier gives ``correct=False`` with the reason in ``error``.

    This runs the verifier in the calling process, with no time or memory limit; the reward path
    uses :class:`rewards.sandbox.VerifierPool`, which adds both.
    """
    fn = resolve_verifier(verifier) if isinstance(verifier, str) else verifier
    if not isinstance(response, str):
        return Verdict(False, None, False, f"response is {type(response).__name__}, not text")
    ext = extract(response, max_chars=max_chars)
    if ext.truncated:
        return Verdict(False, None, True, None)
    if ext.final is None:
        return Verdict(False, None, False, ext.note or "empty answer")
    try:
        result = fn(ext.final, str(gold))
    except Exception as e:  # a verifier that raises costs the sample, not the run
        return Verdict(False, ext.final, False, f"{type(e).__name__}: {e}"[:500])
    if isinstance(result, bool) or result in (0, 1):
        return Verdict(bool(result), ext.final, False, ext.note)
    return Verdict(False, ext.final, False, f"verifier returned {result!r}; expected a bool")
