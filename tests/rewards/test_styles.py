"""Reward functions written for verl, TRL and OpenRLHF, and kvrl's rich form, called unchanged
(``rewards/styles.py``): through the sandbox in a batch, a hang and an exception in each style handled
as kvrl's own; graded scores kept as the reward and thresholded for accuracy; style detection and its
error when a signature fits several styles or none."""

from __future__ import annotations

import pytest

from rewards import RewardConfig, UnknownVerifier, VerifierPool, total_rewards
from rewards.length import LengthPenalty
from rewards.registry import resolve_scorer
from rewards.styles import StyleError, detect_style

PLUGIN = """
def verl_score(data_source, solution_str, ground_truth, extra_info=None):
    answer = solution_str.split("◁/think▷")[-1]
    unit = extra_info.get("unit", "")
    # verl: a dict with "score"; partial credit for the number without its unit
    score = 1.0 if f"{ground_truth} {unit}" in answer else 0.25 * (ground_truth in answer)
    return {"score": score, "src": data_source}

def verl_hang(data_source, solution_str, ground_truth, extra_info=None):
    while True:
        pass

def verl_raise(data_source, solution_str, ground_truth, extra_info=None):
    raise ValueError("verl boom")

def trl_units(completions, answer, unit, **kwargs):
    # TRL: conversational completions, dataset columns as lists, one score per completion (None: skip)
    out = []
    for c, a, u in zip(completions, answer, unit):
        text = c[0]["content"]
        out.append(None if "skip" in text else float(f"{a} {u}" in text))
    return out

def trl_hang(completions, **kwargs):
    while True:
        pass

def trl_raise(completions, **kwargs):
    raise KeyError("trl boom")

def orlhf(queries, prompts, labels):
    # OpenRLHF: queries hold prompt and response; rewards one per query
    rewards = [float(q.startswith(p) and l in q[len(p):]) for q, p, l in zip(queries, prompts, labels)]
    return {"rewards": rewards, "scores": [0.0] * len(queries), "extra_logs": {}}

def orlhf_hang(queries, prompts, labels):
    while True:
        pass

def orlhf_raise(queries, prompts, labels):
    raise RuntimeError("openrlhf boom")

def rich(prediction, gold, response, row):
    # kvrl's rich form: the extracted answer, the whole response and the row; a graded score
    return 1.0 if prediction == f"{gold} {row['unit']}" else 0.5 * (gold in response)

def rich_hang(prediction, gold, response, row):
    while True:
        pass

def rich_raise(prediction, gold, response, row):
    raise TypeError("rich boom")

def ambiguous(completions, data_source, solution_str, ground_truth):
    return [1.0]

def lonely(text):
    return True
"""

ROW = {"id": "p1", "question": "How far?", "answer": "12", "unit": "km", "images": ["x.png"]}
RIGHT = "◁think▷ 6 + 6 ◁/think▷ \\boxed{12 km}"
BARE = "◁think▷ 6 + 6 ◁/think▷ \\boxed{12}"
WRONG = "◁think▷ 6 + 7 ◁/think▷ \\boxed{13 km}"


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "kvrl_style_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the sandbox's spawned workers import it too
    return "kvrl_style_plugin"


def test_each_style_scores_a_batch_in_the_sandbox_and_fails_as_kvrls_own(plugin):
    cfg = RewardConfig(verifier="math", correct_threshold=1.0)

    def task(name, response):
        return cfg.task(response, ROW["answer"], f"{plugin}:{name}", ROW["question"], ROW)

    cases = {
        # style: (scoring function, [(response, score)]); hang and raise variants follow
        "verl": ("verl_score", [(RIGHT, 1.0), (BARE, 0.25), (WRONG, 0.0)]),
        "trl": ("trl_units", [(RIGHT, 1.0), (WRONG, 0.0), (RIGHT + " skip", 0.0)]),
        "openrlhf": ("orlhf", [(RIGHT, 1.0), (WRONG, 0.0)]),
        "rich": ("rich", [(RIGHT, 1.0), (BARE, 0.5), (WRONG, 0.0)]),
    }
    tasks, expected = [], []
    for style, (name, scored) in cases.items():
        prefix = {"openrlhf": "orlhf"}.get(style, style)
        for response, score in scored:
            tasks.append(task(name, response))
            expected.append(("score", score))
        tasks += [task(f"{prefix}_hang", RIGHT), task(f"{prefix}_raise", RIGHT)]
        expected += [("error", "verifier timed out after 3 s"), ("error", "boom")]
    tasks.append(task("rich", "◁think▷ never closed"))  # truncated: no verifier sees it, in any style
    expected.append(("truncated", None))
    with VerifierPool(workers=2, timeout_s=3.0) as pool:
        verdicts = pool.verify(tasks)
    for t, v, (kind, value) in zip(tasks, verdicts, expected, strict=True):
        if kind == "score":
            assert v.error in (None, "verifier gave no score (None): counted as 0"), (t.verifier, v)
            assert v.score == value and v.correct == (value >= 1.0), (t.verifier, t.response, v)
        elif kind == "error":
            assert not v.correct and value in (v.error or ""), (t.verifier, v)
        else:
            assert v.truncated and not v.correct and v.score is None
    assert "no score (None)" in verdicts[7].error  # TRL's "does not apply"
    # the rewards are the scores; the length reward's split and the accuracy take them as correct from 1.0
    scores = [v.score for v in verdicts[:3]]
    rewards = total_rewards(
        [v.correct for v in verdicts[:3]], [10, 10, 10], [0, 0, 0], 0, LengthPenalty(), scores
    )
    assert rewards == [1.0, 0.25, 0.0]


def test_a_lower_threshold_counts_partial_credit_as_correct(plugin):
    cfg = RewardConfig(verifier=f"{plugin}:verl_score", correct_threshold=0.25)
    assert cfg.task(BARE, "12", row=ROW).style == "auto"  # rewards.verifier's style: detected
    with VerifierPool(workers=1, timeout_s=10.0) as pool:
        (v,) = pool.verify([cfg.task(BARE, "12", None, ROW["question"], ROW)])
    assert v.score == 0.25 and v.correct


def test_styles_are_detected_from_signatures_and_ambiguity_is_an_error(plugin):
    import importlib

    mod = importlib.import_module(plugin)
    assert detect_style(mod.verl_score) == "verl"
    assert detect_style(mod.trl_units) == "trl"
    assert detect_style(mod.orlhf) == "openrlhf"
    assert detect_style(mod.rich) == "kvrl_rich"
    assert detect_style(lambda prediction, gold: True) == "kvrl"
    with pytest.raises(StyleError, match=r"fits verl and trl .* '@STYLE'"):
        detect_style(mod.ambiguous)
    with pytest.raises(StyleError, match="fits none"):
        detect_style(mod.lonely)
    # a declared style settles it, by suffix or by rewards.verifier_style; a bad one is named
    assert resolve_scorer(f"{plugin}:ambiguous@trl")[1] == "trl"
    assert resolve_scorer(f"{plugin}:ambiguous", "verl")[1] == "verl"
    with pytest.raises(UnknownVerifier, match="unknown style 'torch'"):
        resolve_scorer(f"{plugin}:rich@torch")
    with pytest.raises(UnknownVerifier, match="fits verl and trl"):
        RewardConfig(verifier=f"{plugin}:ambiguous")
    with pytest.raises(ValueError, match="verifier_style must be auto or one of"):
        RewardConfig(verifier_style="deepspeed")
