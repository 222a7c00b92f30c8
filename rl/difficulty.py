"""``kvrl difficulty``: estimate each problem's difficulty from the current model (Kimi k1.5 sec. 2.3.4).

For every problem, sample k responses at a set temperature and verify them: difficulty = 1 - pass
rate. Optionally ask again with thinking switched off (an empty ``◁think▷◁/think▷`` pre-filled) and
drop problems answered correctly in any of those tries: they are easy to hack.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from curriculum import difficulty_from_outcomes, easy_to_hack
from kimivl import ImageInputError, KimiVLProcessor
from rewards import Task, VerifierPool
from rollout.engine import EngineConfig, make_llm
from rollout.inputs import make_request
from rollout.prompts import chat_prompt

from .data import DataError, Problem, load_problems

log = logging.getLogger(__name__)


@dataclass
class DifficultyJob:
    checkpoint: str
    data: str
    out: str | None = None  # default: <data stem>.difficulty<suffix> beside the data
    k: int = 10
    temperature: float = 1.0
    max_tokens: int = 1024
    verifier: str = "math"  # for rows without a verifier column
    no_think_tries: int = 0  # > 0: drop problems solved without thinking in this many tries
    max_model_len: int = 4096
    seed: int = 0
    workers: int = 2

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.no_think_tries < 0:
            raise ValueError(f"no_think_tries must be >= 0, got {self.no_think_tries}")

    def out_path(self) -> Path:
        if self.out:
            return Path(self.out)
        data = Path(self.data)
        suffix = data.suffix if data.suffix in (".jsonl", ".parquet") else ".jsonl"
        return data.with_name(f"{data.stem}.difficulty{suffix}")


def make_requests(problems: list[Problem], processor, thinking: bool, source: str) -> list[dict]:
    """vLLM prompts for problems; a bad image fails naming the dataset row."""
    requests = []
    for p in problems:
        prompt = chat_prompt(processor, p.question, len(p.images), thinking=thinking)
        try:
            requests.append(make_request(prompt, p.images, processor.image_processor))
        except ImageInputError as e:
            raise DataError(f"{source}, row {p.row}: {e}") from e
    return requests


def sample_and_verify(llm, pool, problems, requests, params, default_verifier) -> list[list[tuple]]:
    """Per problem, (vLLM completion, Verdict) for each of its sampled responses, in one engine batch."""
    outputs = llm.generate(requests, params)
    tasks, owner = [], []
    for i, (p, out) in enumerate(zip(problems, outputs, strict=True)):
        for completion in out.outputs:
            tasks.append((completion, Task(completion.text, p.answer, p.verifier or default_verifier)))
            owner.append(i)
    results: list[list[tuple]] = [[] for _ in problems]
    verdicts = pool.verify([task for _, task in tasks])
    for i, (completion, _), verdict in zip(owner, tasks, verdicts, strict=True):
        results[i].append((completion, verdict))
    return results


def _pass_outcomes(llm, pool, problems, requests, params, default_verifier) -> list[list[float]]:
    """Per problem, the 0/1 outcome of each of its sampled responses."""
    results = sample_and_verify(llm, pool, problems, requests, params, default_verifier)
    return [[float(v.correct) for _, v in r] for r in results]


def write_rows(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix == ".parquet":
        import datasets

        datasets.Dataset.from_list(rows).to_parquet(str(tmp))
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)


def estimate_difficulty(job: DifficultyJob) -> dict:
    """Run the job; write the dataset with ``difficulty`` and ``pass_rate`` columns; return a summary."""
    from vllm import SamplingParams

    problems = load_problems(job.data).problems
    processor = KimiVLProcessor.from_pretrained(job.checkpoint)
    llm = make_llm(EngineConfig(model=job.checkpoint, seed=job.seed, max_model_len=job.max_model_len))
    with VerifierPool(workers=job.workers) as pool:
        params = SamplingParams(
            n=job.k, temperature=job.temperature, max_tokens=job.max_tokens, seed=job.seed
        )
        reqs = make_requests(problems, processor, True, job.data)
        outcomes = _pass_outcomes(llm, pool, problems, reqs, params, job.verifier)
        hackable = [False] * len(problems)
        if job.no_think_tries:
            params = SamplingParams(
                n=job.no_think_tries,
                temperature=job.temperature,
                max_tokens=job.max_tokens,
                seed=job.seed + 1,
            )
            reqs = make_requests(problems, processor, False, job.data)
            no_think = _pass_outcomes(llm, pool, problems, reqs, params, job.verifier)
            hackable = [easy_to_hack(o) for o in no_think]
    rows = []
    for p, o, hack in zip(problems, outcomes, hackable, strict=True):
        if hack:
            continue
        row = dict(p.columns)
        row["difficulty"] = difficulty_from_outcomes(o)
        row["pass_rate"] = 1.0 - row["difficulty"]
        rows.append(row)
    out = job.out_path()
    write_rows(rows, out)
    summary = {
        "problems": len(problems),
        "written": len(rows),
        "dropped_easy_to_hack": sum(hackable),
        "mean_difficulty": sum(r["difficulty"] for r in rows) / max(len(rows), 1),
        "out": str(out),
    }
    log.info("difficulty: %s", summary)
    return summary
