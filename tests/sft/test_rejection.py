"""``kvrl sft build`` (rejection sampling): which problems are sampled with which seeds."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tests.helpers import RecordingLLM


def test_sft_build_samples_each_problem_from_its_own_seed(monkeypatch, tmp_path):
    """``kvrl sft build`` (rejection sampling) seeds each problem as ``kvrl difficulty`` does; it once
    gave every problem the job's seed, so all of them drew the same random stream."""
    import sft.rejection
    from evaluation.pass_rates import problem_seed
    from sft.rejection import BuildJob, build_sft_data

    llm = RecordingLLM()
    monkeypatch.setattr(sft.rejection, "make_llm", lambda cfg: llm)
    monkeypatch.setattr(sft.rejection, "KimiVLProcessor", SimpleNamespace(from_pretrained=lambda path: None))
    monkeypatch.setattr(sft.rejection, "make_requests", lambda problems, *_: [p.id for p in problems])
    rows = [{"id": f"p{i}", "question": f"What is {i}+4?", "answer": "4"} for i in range(3)]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = BuildJob(checkpoint="ckpt", data=str(data), out=str(tmp_path / "sft.jsonl"), k=2, seed=5, workers=1)
    assert build_sft_data(job)["written"] == 6
    ((*calls,),) = llm.calls
    assert {pid: (sp.seed, sp.n) for pid, sp in calls} == {
        f"p{i}": (problem_seed(5, f"p{i}", "sft-build"), 2) for i in range(3)
    }
    assert len({sp.seed for _, sp in calls}) == 3
