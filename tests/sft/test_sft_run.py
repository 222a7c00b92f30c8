"""`kvrl sft` end to end on the tiny model (Ray + DeepSpeed), its checkpoint in vLLM (`kvrl sft build`
samples from it) and `kvrl sft build` keeping only verified-correct responses. `kvrl rl` from an SFT
checkpoint: the quick demo (tests/kvrl/test_demo.py)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, kvrl, kvrl_here


@pytest.fixture(scope="module")
def sft_run(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    config = str(ROOT / "configs/tiny/sft.yaml")
    code = kvrl_here("sft", "--config", config, f"model={tiny_dir}", f"trainer.output_dir={out}").returncode
    assert code == 0, f"kvrl sft exited {code} (its output is above)"
    return out


@pytest.mark.slow
def test_sft_heldout_loss_falls_and_writes_a_checkpoint(sft_run):
    rows = [json.loads(line) for line in (sft_run / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["iteration"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    print("SFT held-out loss by step:", ", ".join(f"{s}: {v:.3f}" for s, v in evals))
    assert evals[0][0] == 0 and len(evals) >= 3
    assert evals[-1][1] < evals[0][1] - 2.0  # a random tiny model starts near ln(1024) = 6.9
    assert all(b <= a + 0.05 for (_, a), (_, b) in itertools.pairwise(evals))
    train = [r for r in rows if "loss" in r]
    assert train[-1]["loss"] < train[0]["loss"] and all(r["skipped"] == 0 for r in train)
    info = json.loads((sft_run / "run_info.json").read_text())
    assert info["config"]["data"]["pack_length"] == 512 and "git_sha" in info
    final = sft_run / "final"
    assert (final / "config.json").exists() and (final / "model.safetensors").exists()
    # `kvrl rl` from an SFT checkpoint (its vLLM engines load it): the quick demo's rl stage,
    # tests/kvrl/test_demo.py.


@pytest.mark.slow
def test_sft_build_writes_only_verified_correct(sft_run, tmp_path, monkeypatch):
    # A verifier that accepts about half of any responses, so some are kept and some rejected.
    (tmp_path / "kvrl_build_plugin.py").write_text(
        "def even(prediction, gold):\n    return len(prediction) % 2 == 0\n"
    )
    problems = [
        {"id": f"p{i}", "question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)} for i in range(6)
    ]
    problems.append(
        {
            "id": "img",
            "question": "What colour is this image?",
            "answer": "red",
            "images": [str(ROOT / "configs/tiny/data/images/red.png")],
        }
    )
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    common = ["--checkpoint", str(sft_run / "final"), "--data", str(data), "--k", "4", "--max-tokens", "96"]
    common += ["--verifier", "kvrl_build_plugin:even", "--temperature", "1.0"]
    proc = kvrl("sft", "build", *common, "--out", str(tmp_path / "all.jsonl"), pythonpath=tmp_path)
    summary = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith('{"problems"')))
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    print("SFT BUILD", summary)
    assert summary["samples"] == 28 and 0 < summary["written"] == len(rows) < summary["samples"]
    monkeypatch.syspath_prepend(str(tmp_path))
    from rewards import verify_response

    for r in rows:
        response = r["messages"][1]["content"]
        assert verify_response(response, r["answer"], "kvrl_build_plugin:even").correct
        assert r["messages"][0]["content"][-1]["text"] in {p["question"] for p in problems}
    # The rows load as an SFT dataset, images resolved relative to the output file.
    from sft.data import load_conversations

    convs = load_conversations(tmp_path / "all.jsonl").conversations
    assert len(convs) == len(rows)
    assert all(Path(im).exists() for c in convs for im in c.images)
    # --shortest with the same seed samples the same responses and keeps the shortest correct one each.
    kvrl("sft", "build", *common, "--shortest", "--out", str(tmp_path / "short.jsonl"), pythonpath=tmp_path)
    short = [json.loads(line) for line in (tmp_path / "short.jsonl").read_text().splitlines()]
    by_source: dict[str, list[int]] = {}
    for r in rows:
        by_source.setdefault(r["source_id"], []).append(r["response_tokens"])
    assert sorted(r["source_id"] for r in short) == sorted(by_source)
    for r in short:
        assert r["response_tokens"] == min(by_source[r["source_id"]])
