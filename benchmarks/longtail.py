"""``kvrl bench longtail``: rollout without the long tail, measured on a policy whose own lengths are
heavy-tailed, on engines that cannot hold an iteration's samples at once; then replayed through a
simulation calibrated against this run before it is given a GPU cluster's cost model.

The workload (``corpus/longtail.py``): "Add these numbers" prompts whose list length follows a power law,
and a tiny Kimi-VL SFT'd on their running-total traces (``configs/longtail/sft.yaml``), so its samples stop
by themselves after a number of steps the prompt sets: heavy-tailed and correlated within a group, nothing
forced. Built once into ``runs/bench/longtail-policy`` (a few minutes) unless ``--model`` names one. The
sizes (``Size``: iterations, prompts, samples, ``max_tokens``, each engine's slots) were fixed before any
policy was tuned on them.

Side by side in one run, the same prompts and seeds per iteration, with a weight sync between iterations
as in RL (it drops the engines' KV caches, so continuing a partial rollout pays its prefill again) and
repeat detection on: the synchronous pool (baseline) and each technique alone and together (the policies
of ``benchmarks/longtail_sim.py``). Each side first tunes one knob over a grid of the same size on a
validation split (other prompts, another seed): the pool its ``chunk_size``, all together its
``segment_tokens``. Reported per policy, on the held-out split, each repeat with its own sampling seed:
rollout throughput (tokens of responses that finished / rollout seconds: partial rollouts are credited
only for finished work), the tail time (``rollout/schedule.py``), the engines' busy fraction, and the
share of its calls, sequence-steps and responses in which each technique acted. The top-level ``ratio``
is all techniques together against the synchronous pool, in throughput.

The simulation (``sim_report``) first fits this machine's cost model to the run's engine calls and
replays every repeat on its own synchronous lengths (the calibration: simulated against measured ratio,
per policy), then the same scheduling on the Kimi-VL-A3B cost model, on the measured lengths scaled so
that ``max_tokens`` maps to the A3B configs' 16K tokens (a stated assumption) and on a synthetic A3B
trace. Every run's measurements are written to ``runs/bench/longtail-*.json``, and
``python -m benchmarks.longtail --calibrate FILE`` replays the simulation from them.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from kimivl import KimiVLProcessor
from rollout.worker import SamplingConfig

from . import longtail_sim as sim
from . import sim_cost
from .common import result
from .longtail_engines import (
    SPECULATIVE_MAX_BATCH,
    SPECULATIVE_TOKENS,
    Pools,
    Workload,
    build_policy,
    make_prompts,
    run_policy,
)

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
RAW_DIR = ROOT / "runs" / "bench"
A3B_MAX_TOKENS = 16384  # rollout.sampling.max_tokens of configs/kimi-vl-a3b/rl-1x8.yaml
# every policy of the simulation, measured here: the speculative ones on a second pool whose engines
# have the grouped proposer (an engine has it or not), the others on a plain one
MEASURED = dict(sim.POLICIES)
SINGLES = ("partial", "divided", "context_aware", "speculative")


@dataclass(frozen=True)
class Size:
    """The workload, fixed before any policy was tuned on it (issue #37). ``slots`` (each engine's
    ``max_num_seqs``) is a quarter of an iteration's samples per engine: the samples do not all fit at
    once, as 16K-32K-token responses fill a GPU engine's KV cache long before ``max_num_seqs``."""

    iterations: int
    prompts: int  # per iteration
    samples: int  # per prompt
    max_tokens: int
    slots: int  # per engine
    tune_iterations: int  # of the validation split
    chunks: tuple[int, ...]  # the synchronous pool's grid: groups per unit of work
    segments: tuple[int, ...]  # all together's grid: tokens per segment (and per divided chunk)
    a3b_trace: tuple[int, int, int] = (5, 64, 8)  # the simulated A3B trace: iterations, prompts, samples

    def describe(self) -> str:
        return f"{self.iterations} iterations x {self.prompts} prompts x {self.samples} samples"


# 64 samples an iteration on 2 engines of 8 slots; chunks of 8 groups give each engine its whole share
# in one call. Both sides get one knob with 3 grid points, selected on a validation split.
FULL = Size(12, 16, 4, 512, 8, 4, chunks=(2, 4, 8), segments=(32, 64, 128))
# a check that it all runs (CI), not a measurement: lengths cut at 128 tokens
QUICK = Size(3, 4, 4, 128, 2, 1, chunks=(1, 2), segments=(32, 64), a3b_trace=(2, 8, 4))
ENGINES = 2


def run(quick: bool = False, repeats: int = 3, model: str | None = None) -> list[dict]:
    """Tune each side on a validation split, then measure every policy ``repeats`` times (each repeat
    its own sampling seed) on held-out prompts; the result compares them and replays them in the
    simulation (``benchmarks/longtail_sim.py``)."""
    model = model or build_policy()
    size = QUICK if quick else FULL
    raw = measure(model, size, repeats)
    # every run's measurements, so that the simulation can be replayed against them later
    # (``python -m benchmarks.longtail --calibrate FILE``)
    RAW_DIR.mkdir(parents=True, exist_ok=True)
    path = RAW_DIR / f"longtail-{'quick' if quick else 'full'}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"size": asdict(size), **raw}, default=asdict))
    log.info("measurements in %s", path)
    return [summarize(raw, size, model) | {"measurements": str(path)}]


def measure(model: str, size: Size, repeats: int) -> dict:
    """Every run of the bench: the tuning runs on the validation split, then per repeat every policy on
    the held-out split (policies interleaved, so that a slow spell of the machine hits all)."""
    processor = KimiVLProcessor.from_pretrained(model)
    sampling = SamplingConfig(n=size.samples, max_tokens=size.max_tokens)
    validation = make_prompts(processor, size.tune_iterations * size.prompts, seed=2)
    heldout = make_prompts(processor, size.iterations * size.prompts, seed=1)
    raw: dict = {"tuning": {"sync": {}, "all": {}}, "runs": {name: [] for name in MEASURED}}
    with Pools(model, ENGINES, size.slots) as (pools, weights):
        tune = Workload(
            validation, sampling, size.tune_iterations, size.segments[0], size.segments[0], seed=100
        )
        for speculative, pool in pools.items():
            warm = replace(tune, prompts=validation[: size.prompts], iterations=1)
            run_policy(pool, weights, warm, sim.Policy("warm-up", speculative=speculative))
        for chunk in size.chunks:
            pools[False].chunk_size = chunk
            raw["tuning"]["sync"][chunk] = run_policy(pools[False], weights, tune, MEASURED["sync"])
        chunk = max(size.chunks, key=lambda c: raw["tuning"]["sync"][c]["throughput"])
        for segment in size.segments:
            work = replace(tune, chunk_tokens=segment, segment_tokens=segment)
            pools[True].chunk_size = chunk
            raw["tuning"]["all"][segment] = run_policy(pools[True], weights, work, MEASURED["all"])
        segment = max(size.segments, key=lambda s: raw["tuning"]["all"][s]["throughput"])
        raw["chunk_size"], raw["segment_tokens"] = chunk, segment
        for pool in pools.values():
            pool.chunk_size = chunk  # the tuned units serve every policy that runs whole samples
        work = Workload(heldout, sampling, size.iterations, segment, segment)
        for r in range(repeats):
            for name, policy in MEASURED.items():
                runs = run_policy(pools[policy.speculative], weights, replace(work, seed=r), policy)
                raw["runs"][name].append(runs)
    return raw


def summarize(raw: dict, size: Size, model: str) -> dict:
    """The result record: medians per policy, each repeat's ratio, the techniques each policy used, and
    the simulation (calibrated on this run's cost model first, then on the A3B one)."""
    runs = raw["runs"]
    summary = {name: _median(r) for name, r in runs.items()}
    base = summary["sync"]
    for s in summary.values():
        s["throughput_vs_sync"] = s["throughput"] / base["throughput"]
        s["tail_vs_sync"] = s["tail_s"] / base["tail_s"] if base["tail_s"] else math.nan
    per_repeat = [a["throughput"] / b["throughput"] for a, b in zip(runs["all"], runs["sync"], strict=True)]
    best_single = max(SINGLES, key=lambda name: summary[name]["throughput"])
    simulation = sim_report(raw, size)
    simulation["ratio"] = simulation["a3b_measured_trace"]["ratio"]
    return result(
        "longtail",
        [r["throughput"] for r in runs["all"]],
        [r["throughput"] for r in runs["sync"]],
        "finished tokens/s",
        higher_is_better=True,
        size=size.describe(),
        policies={k: {m: v for m, v in s.items() if m not in ("trace", "calls")} for k, s in summary.items()},
        ratio_per_repeat=per_repeat,
        best_single=best_single,
        all_vs_best_single=summary["all"]["throughput"] / summary[best_single]["throughput"],
        tail_ratio=summary["all"]["tail_vs_sync"],
        tuning={
            "what": "one knob per side, same grid size, chosen on a validation split (other prompts, another "
            "seed), reported on the held-out split",
            "sync_chunk_size": {str(k): v["throughput"] for k, v in raw["tuning"]["sync"].items()},
            "all_segment_tokens": {str(k): v["throughput"] for k, v in raw["tuning"]["all"].items()},
            "chosen": {"chunk_size": raw["chunk_size"], "segment_tokens": raw["segment_tokens"]},
        },
        workload=sim.describe_trace([g for t in runs["sync"][0]["trace"] for g in t]),
        settings=dict(
            asdict(size),
            engines=ENGINES,
            speculative_tokens=SPECULATIVE_TOKENS,
            speculative_max_batch=SPECULATIVE_MAX_BATCH,
        ),
        simulation=simulation,
        baseline_description="the synchronous pool at its tuned chunk size: whole groups in units of work, "
        "every sample to its end",
        model=model,
    )


def _median(runs: list[dict]) -> dict:
    """The run with the median throughput (its tail and busy fraction with it), plus every throughput."""
    ordered = sorted(runs, key=lambda r: r["throughput"])
    mid = dict(ordered[(len(ordered) - 1) // 2])
    mid["throughput_runs"] = [r["throughput"] for r in runs]
    return mid


def sim_report(raw: dict, size: Size) -> dict:
    """The simulation, in two steps. First on this machine's cost model (fitted to every engine call of
    this run) with this run's settings and measured drafter, on the synchronous runs' own lengths: each
    policy's simulated ratio against the measured one (the calibration). Then the same scheduling and
    drafter on the Kimi-VL-A3B cost model, each side at the best of its grid there."""
    runs = raw["runs"]
    calls = [c for name in runs for r in runs[name] for c in r["calls"]]
    cost, fit = sim_cost.fit_cost(calls)
    overhead = sim_cost.fit_call_overhead(calls)
    drafter = _drafter(calls)
    spec = {k: drafter[k] for k in ("draft_tokens", "accepted_per_draft", "draft_rate")}
    traces = [_groups(t) for t in _median(runs["sync"])["trace"]]
    cpu = sim.Settings(
        engines=ENGINES,
        max_num_seqs=size.slots,
        kv_pool_tokens=10**9,  # the tiny model's KV never fills the engines' 1 GiB here
        chunk_size=raw["chunk_size"],
        chunk_tokens=raw["segment_tokens"],
        segment_tokens=raw["segment_tokens"],
        spec_max_batch=SPECULATIVE_MAX_BATCH if size.slots > SPECULATIVE_MAX_BATCH else 0,
        global_kv_cache=False,
        cost=cost,
        call_s=overhead["call_s"],
        call_request_s=overhead["call_request_s"],
        **spec,
    )
    table = _calibration(runs, cpu)
    scale = A3B_MAX_TOKENS / size.max_tokens
    validation = [
        _groups(t, scale)
        for t in raw["tuning"]["sync"][_key(raw["tuning"]["sync"], raw["chunk_size"])]["trace"]
    ]
    a3b = sim.Settings(**spec, call_s=overhead["call_s"], call_request_s=overhead["call_request_s"])
    return {
        "what": "trace-driven simulation, not a measurement: the policies as kvrl implements them "
        "(rollout/schedule.py's queue, the drafter's rules) replayed on a cost model "
        "(benchmarks/sim_cost.py)",
        "drafter": drafter,
        "cpu_calibration": {
            "what": "this machine's cost model fitted to this run's engine calls, this run's settings, on "
            "the synchronous runs' lengths: simulated vs measured ratio to sync, per policy",
            "fit": fit,
            "call_overhead": overhead,
            "policies": table,
            "max_abs_error": max(abs(v["error"]) for v in table.values()),
        },
        "a3b_measured_trace": _a3b(
            [_groups(t, scale) for t in traces],
            validation,
            a3b,
            f"the sync runs' lengths x {scale:g} (max_tokens -> 16K) on Kimi-VL-A3B engines (rl-1x8)",
        ),
        "a3b_synthetic_trace": _a3b(
            sim.synthetic_traces(*size.a3b_trace, seed=0),
            sim.synthetic_traces(*size.a3b_trace, seed=100),
            a3b,
            f"sim.synthetic_traces{size.a3b_trace} (iterations, prompts, samples), median 4K, p99 24K "
            "tokens, on Kimi-VL-A3B engines (rl-1x8)",
        ),
        "assumed": {
            "a3b_cost_model": "benchmarks/sim_cost.py: bandwidth efficiency 0.7, prefill MFU 0.4, NCCL "
            "latency 15 us, spec_factor 1.1 (unvalidated until a GPU run)",
            "a3b_drafting": f"the drafter {drafter['source']} here, drafting at any batch size on GPU",
            "a3b_lengths": f"the measured shape scaled x {scale:g}",
            "a3b_call_overhead": "an engine call's overhead as measured on this CPU host",
        },
        "ratio": None,  # filled below: the A3B measured-trace ratio of all together, each side tuned
    }


def _drafter(calls: list[dict]) -> dict:
    """The drafter's rates over the run's engine calls, or, where no draft was made, the simulator's
    assumed ones, labelled so."""
    drafts = sum(c["drafts"] for c in calls)
    if not drafts:
        d = sim.Settings()
        return {
            "draft_tokens": d.draft_tokens,
            "accepted_per_draft": d.accepted_per_draft,
            "draft_rate": d.draft_rate,
            "source": "assumed",
        }
    return {
        "draft_tokens": sum(c["draft_tokens"] for c in calls) / drafts,
        "accepted_per_draft": sum(c["accepted_tokens"] for c in calls) / drafts,
        "draft_rate": drafts / max(sum(c["spec_seq_steps"] for c in calls), drafts),
        "source": "measured",
    }


def _calibration(runs: dict, cpu: sim.Settings) -> dict:
    """Each repeat (its own sampling seed) replayed on its own synchronous run's lengths, each policy's
    simulated ratio set against the same repeat's measured one; the medians over the repeats compared."""
    simulated = [sim.compare([_groups(t) for t in r["trace"]], cpu) for r in runs["sync"]]
    table = {}
    for name in MEASURED:
        m = [a["throughput"] / b["throughput"] for a, b in zip(runs[name], runs["sync"], strict=True)]
        x = [r[name]["throughput_vs_sync"] for r in simulated]
        table[name] = {
            "measured_ratio": statistics.median(m),
            "simulated_ratio": statistics.median(x),
            "error": statistics.median(x) / statistics.median(m) - 1,
            "measured_ratio_runs": m,
            "simulated_ratio_runs": x,
            "measured_active": _median(runs[name])["active"],
            "simulated_active": simulated[len(simulated) // 2][name]["active"],
        }
    return table


A3B_CHUNKS = (2, 8, 32)  # groups per unit of the synchronous pool (rl-1x8 ships 8)
A3B_SEGMENTS = (4096, 8192, 16384)  # all together: segment_tokens = chunk_tokens (16384: partial idle)


def _a3b(traces, validation, settings: sim.Settings, what: str) -> dict:
    """Every policy on the A3B cost model, the synchronous pool at the best chunk size of its grid and
    all together at the best segment of its grid, both chosen on ``validation``; ratios on ``traces``."""

    def rate(policy: str, **kw) -> float:
        return sim.simulate(validation, policy, replace(settings, **kw))["throughput_tokens_per_s"]

    chunk = max(A3B_CHUNKS, key=lambda c: rate("sync", chunk_size=c))
    segment = max(A3B_SEGMENTS, key=lambda g: rate("all", chunk_size=chunk, chunk_tokens=g, segment_tokens=g))
    tuned = replace(settings, chunk_size=chunk, chunk_tokens=segment, segment_tokens=segment)
    out = sim.compare(traces, tuned)
    best = max(SINGLES, key=lambda name: out[name]["throughput_tokens_per_s"])
    return {
        "what": what,
        "tuned": {"chunk_size": chunk, "segment_tokens": segment, "grids": [A3B_CHUNKS, A3B_SEGMENTS]},
        "ratio": out["all"]["throughput_vs_sync"],
        "best_single": best,
        "all_vs_best_single": out["all"]["throughput_tokens_per_s"] / out[best]["throughput_tokens_per_s"],
        "policies": {k: _sim_summary(v) for k, v in out.items()},
    }


def _groups(trace, scale: float = 1.0) -> list[sim.Group]:
    """A trace as groups (from this run, or from its JSON), lengths scaled."""
    out = []
    for g in trace:
        prompt, lengths = (
            (g.prompt_tokens, g.response_tokens)
            if isinstance(g, sim.Group)
            else (g["prompt_tokens"], g["response_tokens"])
        )
        out.append(sim.Group(prompt, tuple(max(1, round(x * scale)) for x in lengths)))
    return out


def _key(table: dict, key: int):
    """``key`` as ``table`` holds it (an int in this run, a string once read back from JSON)."""
    return key if key in table else str(key)


def _sim_summary(r: dict) -> dict:
    keys = (
        "throughput_tokens_per_s",
        "throughput_vs_sync",
        "tail_s",
        "tail_vs_sync",
        "busy_fraction",
        "active",
    )
    return {k: r[k] for k in keys}


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.longtail --calibrate FILE``: the simulation again, from a run's measurements."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--calibrate", type=Path, required=True, help="runs/bench/longtail-*.json (or .json.gz)")
    args = ap.parse_args(argv)
    if args.calibrate.suffix == ".gz":
        import gzip

        raw = json.loads(gzip.decompress(args.calibrate.read_bytes()))
    else:
        raw = json.loads(args.calibrate.read_text())
    size = {**raw["size"], "a3b_trace": tuple(raw["size"]["a3b_trace"])}
    print(json.dumps(sim_report(raw, Size(**size)), indent=1))


if __name__ == "__main__":
    main()
