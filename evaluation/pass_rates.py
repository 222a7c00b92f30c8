"""``kvrl difficulty``: estimate each problem's difficulty from the current model (Kimi k1.5 sec. 2.3.4).

For every problem, sample k responses at a set temperature and verify them: difficulty = 1 - pass
rate. Optionally ask again with thinking switched off (an empty ``◁think▷◁/think▷`` pre-filled) and
drop problems answered correctly in any of those tries: they are easy to hack.

Given the RL config (``kvrl difficulty --config``), the lengths, temperature, top-p, default verifier
and seed are those of its rollouts, so a long trace is measured as RL will sample it, not cut inside
its thinking and counted as a failure. Each problem draws from its own seed (:func:`problem_seed`).
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

from corpus.problems import DataError, Problem, load_problems
from curriculum import difficulty_from_outcomes, easy_to_hack
from kimivl import ImageInputError, KimiVLProcessor
from rewards import DEFAULT_VERIFIER, VerifierPool, problem_task
from rollout.engine import EngineConfig, make_llm
from rollout.inputs import make_request
from rollout.prompts import chat_prompt
from runkit.files import replacing

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class SampleJob:
    """What every offline sample-and-verify job shares: k samples per problem of ``data`` from
    ``checkpoint``, verified in ``workers`` sandboxed processes."""

    checkpoint: str
    data: str
    k: int = 10
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024
    verifier: str = DEFAULT_VERIFIER  # for rows without a verifier column
    max_model_len: int = 4096
    seed: int = 0
    workers: int = 2

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")


@dataclass(kw_only=True)
class DifficultyJob(SampleJob):
    out: str | None = None  # default: <data stem>.difficulty<suffix> beside the data
    no_think_tries: int = 0  # > 0: drop problems solved without thinking in this many tries

    def __post_init__(self):
        super().__post_init__()
        if self.no_think_tries < 0:
            raise ValueError(f"no_think_tries must be >= 0, got {self.no_think_tries}")
        if not 1 <= self.max_tokens < self.max_model_len:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be >= 1 and below max_model_len ({self.max_model_len}),"
                " which also holds the prompt"
            )

    def out_path(self) -> Path:
        if self.out:
            return Path(self.out)
        data = Path(self.data)
        suffix = data.suffix if data.suffix in (".jsonl", ".parquet") else ".jsonl"
        return data.with_name(f"{data.stem}.difficulty{suffix}")


def problem_seed(seed: int, problem_id: str, tag: str) -> int:
    """The sampling seed of one problem: from the job's seed and the problem's id, so each problem has
    its own stream, the same wherever its row is in the file. ``tag`` keeps apart the stream of each
    kind of try (with thinking, without)."""
    return zlib.crc32(f"{seed}:{tag}:{problem_id}".encode())


def sampling_params(job, problems: list[Problem], n: int, tag: str) -> list:
    """One ``vllm.SamplingParams`` per problem (``llm.generate`` takes a list), each with its own seed.
    ``job``: a ``DifficultyJob`` or ``sft.rejection.BuildJob`` (temperature, top_p, max_tokens, seed)."""
    from vllm import SamplingParams

    return [
        SamplingParams(
            n=n,
            temperature=job.temperature,
            top_p=job.top_p,
            max_tokens=job.max_tokens,
            seed=problem_seed(job.seed, p.id, tag),
        )
        for p in problems
    ]


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
    """Per problem, (vLLM completion, Verdict) for each of its sampled responses, in one engine batch.
    ``params``: one ``SamplingParams`` for all, or a list of one per problem."""
    outputs = llm.generate(requests, params)
    tasks, owner = [], []
    for i, (p, out) in enumerate(zip(problems, outputs, strict=True)):
        for completion in out.outputs:
            task = problem_task(
                completion.text, p.answer, p.verifier or default_verifier, p.question, p.columns
            )
            tasks.append((completion, task))
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
    with replacing(out) as tmp:
        if out.suffix == ".parquet":
            import datasets  # lazy: only the parquet output needs it

            datasets.Dataset.from_list(rows).to_parquet(str(tmp))
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")


def estimate_difficulty(job: DifficultyJob) -> dict:
    """Run the job; write the dataset with ``difficulty`` and ``pass_rate`` columns; return a summary."""
    problems = load_problems(job.data).problems
    processor = KimiVLProcessor.from_pretrained(job.checkpoint)
    llm = make_llm(EngineConfig(model=job.checkpoint, seed=job.seed, max_model_len=job.max_model_len))
    with VerifierPool(workers=job.workers) as pool:
        params = sampling_params(job, problems, job.k, "difficulty")
        reqs = make_requests(problems, processor, True, job.data)
        outcomes = _pass_outcomes(llm, pool, problems, reqs, params, job.verifier)
        hackable = [False] * len(problems)
        if job.no_think_tries:
            params = sampling_params(job, problems, job.no_think_tries, "no-think")
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
