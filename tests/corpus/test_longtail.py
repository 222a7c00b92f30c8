"""corpus/longtail.py: count-down sums whose traces take one step a term, a power law of sizes,
heavy-tailed trace lengths."""

from __future__ import annotations

import json
import random
import re

import pytest

from corpus.longtail import CountdownSum, draw_size, make_longtail, make_problems, size_law
from corpus.problems import load_problems
from rewards import verify_response
from sft.data import load_conversations


@pytest.fixture(scope="module")
def tokenizer():
    from kimivl.tiny import build_tokenizer

    return build_tokenizer()


def test_a_trace_by_hand():
    p = CountdownSum("a", size=4)
    # the whole numbers below n = 5, largest first: 4 + 3 + 2 + 1 = 10
    assert p.answer == 10
    assert p.question() == "Add every whole number below n, largest first: n=5."
    assert p.response() == "◁think▷4+3+2+1◁/think▷10"
    assert verify_response(p.response(), "10", "math").correct
    assert CountdownSum("b", 2).response() == "◁think▷2+1◁/think▷3"
    assert CountdownSum("c", 98).answer == 4851  # 98 * 99 / 2


def test_every_step_is_one_token_less(tokenizer):
    # The question's n and every term are single tokens, the same id after "=" and after "+", so the
    # first term is the k -> k - 1 step of every later term, from the question's last number.
    for size in (2, 12, 57, 98):
        p = CountdownSum("a", size)
        prompt = tokenizer(p.question())["input_ids"]
        trace = tokenizer(p.response())["input_ids"]
        assert tokenizer.decode(prompt[-2:]) == f"{size + 1}."
        assert trace[1:-2:2] == [tokenizer(f"+{k}")["input_ids"][1] for k in range(size, 0, -1)]
    for k in range(100):
        eq, plus = tokenizer(f"={k}")["input_ids"], tokenizer(f"+{k}")["input_ids"]
        assert len(eq) == len(plus) == 2 and eq[1] == plus[1]


def test_size_law_by_hand():
    # alpha 1 on [2, 4]: weights 1/2, 1/3, 1/4, total 13/12, so P = 6/13, 4/13, 3/13 and the
    # cumulative law is 6/13, 10/13, 1.
    assert size_law(1.0, 2, 4) == pytest.approx([6 / 13, 10 / 13, 1.0], abs=1e-12)
    # alpha 0 is uniform: 1/3, 2/3, 1
    assert size_law(0.0, 5, 7) == pytest.approx([1 / 3, 2 / 3, 1.0], abs=1e-12)

    class Fixed(random.Random):
        def __init__(self, u):
            self.u = u

        def random(self):
            return self.u

    cumulative = size_law(1.0, 2, 4)
    # u below 6/13 = 0.4615 draws the lowest size, up to 10/13 = 0.769 the next, above it the last
    uniforms = (0.0, 0.46, 0.47, 0.76, 0.78, 0.999)
    assert [draw_size(Fixed(u), cumulative, 2) for u in uniforms] == [2, 2, 3, 3, 4, 4]


def test_writes_prompts_and_conversations_kvrl_reads(tmp_path):
    summary = make_longtail(tmp_path, problems=40, seed=3)
    assert (summary["train"], summary["sft"]) == (40, 40)
    prompts = load_problems(tmp_path / "train.jsonl").problems
    sft = load_conversations(tmp_path / "sft_train.jsonl").conversations
    assert [c.id for c in sft] == [p.id for p in prompts]  # by default the traces are the prompts'
    for p, c in zip(prompts, sft, strict=True):
        match = re.fullmatch(r"Add every whole number below n, largest first: n=(\d+)\.", p.question)
        size = int(match[1]) - 1
        assert p.columns["size"] == size and 2 <= size <= 98
        assert p.answer == str(sum(range(1, size + 1)))
        assert p.difficulty == pytest.approx((size - 2) / 96, abs=1e-4)
        assert not p.images and not c.images
        assert c.messages[0]["content"] == [{"type": "text", "text": p.question}]
        text = c.messages[1]["content"][0]["text"]
        assert verify_response(text, p.answer, "math").correct
        assert text.count("+") == size - 1


def test_sft_traces_can_come_from_a_flatter_law(tmp_path):
    summary = make_longtail(tmp_path, problems=400, seed=0, sft_problems=300, sft_alpha=0.0)
    rows = [json.loads(line) for line in (tmp_path / "sft_train.jsonl").read_text().splitlines()]
    assert len(rows) == 300 and rows[0]["id"] == "lt-sft00000"
    # uniform on [2, 98] has median 50; the alpha-1.5 prompts have median 5
    assert summary["train_sizes"]["p50"] <= 7 and 40 <= summary["sft_sizes"]["p50"] <= 60


def test_trace_lengths_are_heavy_tailed(tokenizer):
    problems = make_problems(2000, seed=0)
    lengths = sorted(len(tokenizer(p.response())["input_ids"]) for p in problems)
    median, p99 = lengths[len(lengths) // 2], lengths[len(lengths) * 99 // 100]
    # the defaults give median size 5 (12 tokens) and p99 size 87 (177 tokens): about 15x
    assert p99 >= 4 * median, (median, p99)
    assert lengths[-1] < 2048 - 100  # the longest trace and its prompt fit in max_model_len


def test_same_seed_same_files(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        make_longtail(tmp_path / name, problems=30, seed=seed, sft_alpha=0.5)
    for file in ("train.jsonl", "sft_train.jsonl"):
        a, b, c = ((tmp_path / name / file).read_text() for name in "abc")
        assert a == b and a != c


@pytest.mark.parametrize(
    "kwargs",
    [
        {"problems": 0},
        {"problems": 5, "low": 0},
        {"problems": 5, "low": 9, "high": 8},
        {"problems": 5, "alpha": -1},
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_longtail(tmp_path, **kwargs)
