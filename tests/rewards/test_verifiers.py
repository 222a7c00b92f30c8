"""Table-driven verifier cases: equivalent forms, near misses, malformed, truncated, adversarial."""

from __future__ import annotations

import pytest

from rewards import extract, verify_response

T, F = True, False
OPEN, CLOSE = "◁think▷", "◁/think▷"

# (verifier, response, gold, correct)
CASES = [
    # --- math: equivalent forms ---
    ("math", "1/2", "0.5", T),
    ("math", r"\frac{1}{2}", "0.5", T),
    ("math", r"\dfrac{1}{2}", r"\frac12", T),
    ("math", "0.50", "1/2", T),
    ("math", r"\sqrt{2}/2", r"\frac{1}{\sqrt{2}}", T),
    ("math", r"2\sqrt{3}", r"\sqrt{12}", T),
    ("math", r"\pi", r"\pi", T),
    ("math", r"2\pi", r"\pi \cdot 2", T),
    ("math", "e^2", "e^{2}", T),
    ("math", r"\{1,2\}", r"\{2,1\}", T),
    ("math", "x = 2", "2", T),
    ("math", "2", "x=2", T),
    ("math", "1,000", "1000", T),
    (r"math", r"50\%", "0.5", T),
    ("math", "(1, 2)", "(1,2)", T),
    ("math", "-3", "-3", T),
    ("math", "3.0", "3", T),
    ("math", r"\frac{6}{8}", r"\frac{3}{4}", T),
    ("math", f"{OPEN}1/2 + 1/4 = 3/4{CLOSE} The answer is \\boxed{{\\frac{{3}}{{4}}}}.", "0.75", T),
    ("math", f"{OPEN}…{CLOSE} so the answer is 12.", "12", T),
    ("math", "We get 5 apples, so the answer is: 5", "5", T),
    ("math", r"first \boxed{3} then corrected \boxed{4}", "4", T),
    ("math", r"\boxed{\frac{1}{\sqrt{3}}}", r"\frac{\sqrt{3}}{3}", T),
    # --- math: near misses ---
    ("math", "0.333", r"\frac{1}{3}", F),
    ("math", r"\pi", "3.14159", F),
    ("math", "[1,2]", "(1,2)", F),
    ("math", "3", "4", F),
    ("math", "-2", "2", F),
    ("math", r"\sqrt{2}", "2", F),
    ("math", r"\{1,2,3\}", r"\{1,2\}", F),
    ("math", r"first \boxed{4} then \boxed{3}", "4", F),
    ("math", "x = 3", "2", F),
    # --- math: malformed and adversarial (refused quickly, score 0) ---
    ("math", "", "1", F),
    ("math", r"\boxed{", "1", F),
    ("math", r"\frac{1}{", "1", F),
    ("math", "9**9**9**9", "1", F),
    ("math", r"\boxed{9^{9^{9^{9}}}}", "1", F),
    ("math", "10^{10000}", "1", F),
    ("math", "(" * 10_000 + ")" * 10_000, "1", F),
    ("math", "1" * 1_000_000, "1", F),
    ("math", "__import__('os').system('touch /tmp/kvrl-pwned')", "0", F),
    ("math", "lambda: 1", "1", F),
    ("math", "\x00\x01\x02", "1", F),
    # --- truncated ---
    ("math", f"{OPEN}thinking that never ends 1/2", "0.5", F),
    ("exact", f"{OPEN}yes", "yes", F),
    # --- choice ---
    ("choice", "B", "B", T),
    ("choice", "(b)", "B", T),
    ("choice", "Option B", "B) blue", T),
    ("choice", "B) blue", "B", T),
    ("choice", "blue", "B) blue", T),
    ("choice", r"\boxed{C}", "C", T),
    ("choice", "C", "B) blue", F),
    ("choice", "red", "B) blue", F),
    ("choice", "", "B", F),
    ("choice", "B", "not a letter at all!", F),  # bad gold: refused
    # --- exact ---
    ("exact", "Paris", "paris", T),
    ("exact", "  Paris. ", "Paris", T),
    ("exact", r"$\text{Paris}$", "Paris", T),
    ("exact", "New  York", "new york", T),
    ("exact", "Pari", "Paris", F),
    ("exact", "Paris, France", "Paris", F),
    # --- number ---
    ("number", "42", "42", T),
    ("number", "1,234.5", "1234.5", T),
    ("number", "The total is 3/4", "0.75", T),
    ("number", "1e-3", "0.001", T),
    ("number", "3.14", "3.14159 ± 0.01", T),
    ("number", "3.16", "3.14159 +- 0.01", F),
    ("number", "about 7 or maybe 8", "8", T),
    ("number", "41.99", "42", F),
    ("number", "no digits here", "1", F),
    ("number", "1/0", "1", F),
    ("number", "9" * 500, "1", F),
]


@pytest.mark.parametrize(("verifier", "response", "gold", "correct"), CASES)
def test_case(verifier, response, gold, correct):
    verdict = verify_response(response, gold, verifier)
    assert verdict.correct is correct, verdict


def test_table_is_large_enough():
    assert len(CASES) >= 60


def test_truncated_is_flagged_and_not_scored():
    v = verify_response(f"{OPEN} 1+1=2 and so", "2")
    assert (v.correct, v.truncated, v.extracted) == (False, True, None)


def test_refusals_and_exceptions_are_recorded():
    assert "code-like" in verify_response("__import__('os')", "0").error
    assert verify_response("9**9**9", "1").error.startswith("RejectedInput: answer has a power tower")

    def broken(prediction, gold):
        raise RuntimeError("boom")

    v = verify_response("1", "1", broken)
    assert (v.correct, v.error) == (False, "RuntimeError: boom")

    v = verify_response("1", "1", lambda p, g: 0.7)
    assert not v.correct and "expected a bool" in v.error


def test_overlong_answer_is_cut_with_reason():
    v = verify_response("x" * 30_000, "x", "exact", max_chars=20_000)
    assert not v.correct and v.error == "answer cut from 30000 to 20000 characters"
    assert len(v.extracted) <= 1001


def test_extraction_rules():
    assert extract(f"{OPEN}a{CLOSE}b{CLOSE} c ").final == "c"  # after the last closing tag
    assert extract("no tags, answer is 5.").final == "5"
    assert extract(r"\boxed{a{b}c} and \boxed{d").final == "a{b}c"  # unbalanced last box skipped
    assert extract(f"{OPEN}x").truncated


def test_injection_executes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"\\boxed{{__import__('os').system('touch {marker}')}}",
        f"$\\exec(open('{marker}','w'))$",
        f"eval(\"open('{marker}', 'w')\")",
    ]
    for verifier in ("math", "number", "exact", "choice"):
        for p in payloads:
            assert not verify_response(p, "12345" if verifier != "choice" else "A", verifier).correct
    assert not marker.exists()
