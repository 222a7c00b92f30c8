"""``kvrl sft build``: rejection-sampled long-CoT SFT data from a checkpoint and a prompt dataset.

For each problem, sample k responses with the rollout engine (vLLM, one batch), verify them in the
sandboxed verifier pool, and write the correct, finished ones as SFT conversations (``sft/data.py``
format); ``shortest`` keeps only the shortest correct one per problem. Images are referenced by path
relative to the output file (bytes images are written beside it), so the dataset can be moved whole.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from corpus.problems import Problem, load_problems
from evaluation.pass_rates import SampleJob, make_requests, sample_and_verify, sampling_params, write_rows
from kimivl import KimiVLProcessor
from rewards import VerifierPool
from rollout.engine import EngineConfig, make_llm
from sft.build import Candidate, keep, sft_row

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class BuildJob(SampleJob):
    out: str
    k: int = 8
    shortest: bool = False  # keep only the shortest correct response per problem (k1.5)

    def __post_init__(self):
        super().__post_init__()
        if Path(self.out).suffix not in (".jsonl", ".parquet"):
            raise ValueError(f"--out {self.out}: write .jsonl or .parquet")


def _image_refs(p: Problem, out: Path) -> list[str]:
    """Each image of ``p`` as a path relative to the output file's folder."""
    refs = []
    for i, image in enumerate(p.images):
        if isinstance(image, bytes | bytearray):
            path = out.with_name(f"{out.stem}_images") / f"{p.id}_{i}.img"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes(image))
        else:
            path = Path(image)
        refs.append(os.path.relpath(path.resolve(), out.parent.resolve()))
    return refs


def build_sft_data(job: BuildJob) -> dict:
    """Run the job and write the dataset; returns a summary. Each problem samples from its own seed
    (``evaluation.pass_rates.problem_seed``), so its responses do not depend on its row or its neighbours."""
    out = Path(job.out)
    problems = load_problems(job.data).problems
    processor = KimiVLProcessor.from_pretrained(job.checkpoint)
    llm = make_llm(EngineConfig(model=job.checkpoint, seed=job.seed, max_model_len=job.max_model_len))
    params = sampling_params(job, problems, job.k, "sft-build")
    with VerifierPool(workers=job.workers) as pool:
        requests = make_requests(problems, processor, True, job.data)
        results = sample_and_verify(llm, pool, problems, requests, params, job.verifier)
    rows, correct = [], 0
    for p, samples in zip(problems, results, strict=True):
        candidates = [
            Candidate(c.text, len(c.token_ids), v.correct, c.finish_reason == "stop") for c, v in samples
        ]
        correct += sum(c.correct for c in candidates)
        chosen = keep(candidates, job.shortest)
        refs = _image_refs(p, out) if chosen else []
        for j in chosen:
            rows.append(
                sft_row(
                    f"{p.id}-{j}",
                    p.question,
                    refs,
                    candidates[j].text,
                    source_id=p.id,
                    answer=p.answer,
                    response_tokens=candidates[j].num_tokens,
                )
            )
    write_rows(rows, out)
    summary = {
        "problems": len(problems),
        "samples": len(problems) * job.k,
        "correct": correct,
        "written": len(rows),
        "problems_kept": len({r["source_id"] for r in rows}),
        "out": str(out),
    }
    log.info("sft build: %s", summary)
    return summary
