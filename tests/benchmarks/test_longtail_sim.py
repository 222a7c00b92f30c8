"""The rollout-scheduling simulator (benchmarks/longtail_sim.py) against schedules worked out by hand.

Most tests use a unit cost model: every decode step takes 1 s whatever the batch and context (t0 = 1,
c_kv = 0) and prefill is free, so a sequence of L tokens takes L seconds and the arithmetic is exact.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from benchmarks.longtail_sim import (
    KV_BYTES_PER_TOKEN,
    KV_POOL_TOKENS,
    POLICIES,
    CostModel,
    Group,
    Settings,
    compare,
    describe_trace,
    kimi_vl_a3b_cost,
    load_traces,
    simulate,
    synthetic_trace,
    synthetic_traces,
    tokens_per_step,
)

UNIT = CostModel(fixed_s=1.0, dense_s=0.0, routed_s=0.0, routed_share=0.0, seq_s=0.0, kv_s=0.0)


def unit_settings(**kw) -> Settings:
    base = {"engines": 1, "max_num_seqs": 64, "kv_pool_tokens": 10**6, "chunk_tokens": 100, "cost": UNIT}
    return Settings(**{**base, **kw})


def test_sync_makespan_is_the_longest_sample_and_the_tail_follows_90_percent():
    # 1 engine, one group of 10 samples: nine of 1 token, one of 10. All run at once (flat step time):
    # nine finish at t=1 (90% of 10 done), the last at t=10. Tail = 10 - 1 = 9 s.
    # Throughput = (9 x 1 + 10) tokens / 10 s = 1.9; the engine is busy all 10 s, 10 sequences of 64
    # slots for 1 s then 1 for 9 s: occupancy (10 + 9) / (64 x 10).
    r = simulate([[Group(1, (1,) * 9 + (10,))]], "sync", unit_settings())
    assert r["makespan_s"] == [10.0]
    assert r["tail_s"] == 9.0
    assert r["throughput_tokens_per_s"] == pytest.approx(1.9, abs=1e-12)
    assert r["busy_fraction"] == pytest.approx(1.0)
    assert r["occupancy"] == pytest.approx(19 / 640)


def test_sync_waits_for_the_whole_chunk_and_divided_refills_the_slot():
    # 1 engine, chunk_size 1 group. Groups A = (1, 4), B = (2, 2).
    # sync: A's chunk runs until its 4-token sample ends (t=4), then B's (2 more): makespan 6.
    # divided: all four samples are requests on the one engine at once: makespan = longest = 4.
    trace = [[Group(1, (1, 4)), Group(1, (2, 2))]]
    settings = unit_settings(chunk_size=1)
    assert simulate(trace, "sync", settings)["makespan_s"] == [6.0]
    assert simulate(trace, "divided", settings)["makespan_s"] == [4.0]


def test_arrival_order_piles_long_groups_on_one_engine_and_divided_spreads_them():
    # 2 engines x 2 slots, chunk_size 2 groups. Arrival: A = (8, 8), B = (8, 8), C = (1, 1), D = (1, 1).
    # sync: engine 0 takes {A, B}: A's two samples t=0..8, then B's t=8..16; engine 1 takes {C, D}:
    #   t=0..1 and 1..2. Makespan 16; busy (16 + 2) / (2 x 16) = 0.5625.
    # divided (first come first served, least-loaded engine): A0, A1, B0, B1 fill the four slots, all
    #   done at t=8; C and D take t=8..9. Makespan 9; both engines busy throughout.
    trace = [[Group(1, (8, 8)), Group(1, (8, 8)), Group(1, (1, 1)), Group(1, (1, 1))]]
    settings = unit_settings(engines=2, max_num_seqs=2, chunk_size=2)
    sync = simulate(trace, "sync", settings)
    assert sync["makespan_s"] == [16.0] and sync["busy_fraction"] == pytest.approx(0.5625)
    divided = simulate(trace, "divided", settings)
    assert divided["makespan_s"] == [9.0] and divided["busy_fraction"] == pytest.approx(1.0)
    assert compare(trace, settings)["divided"]["makespan_vs_sync"] == pytest.approx(9 / 16)


def test_context_aware_runs_the_long_group_first():
    # 2 engines x 1 slot, chunk_size 1, groups of 3: S = (1, 1, 1) arrives before L = (4, 4, 4).
    # sync: engine 0 runs S serially (t=0..3), engine 1 runs L serially (0..4, 4..8, 8..12): 12.
    # divided (first come first served): S0 | S1 at t=0..1; S2 | L0 at 1..2 and 1..5; L1 on engine 0 at
    #   2..6; L2 on engine 1 at 5..9: 9.
    # context_aware: probes first, S0 | L0 at t=0; S is estimated 1 at t=1, L is unknown (counts as
    #   longest), so L1 runs on engine 0 at 1..5 and L2 on engine 1 at 4..8; S1, S2 fill engine 0 at
    #   5..6, 6..7: 8 (= the lower bound: 15 tokens over 2 engines, rounded up).
    trace = [[Group(1, (1, 1, 1)), Group(1, (4, 4, 4))]]
    settings = unit_settings(engines=2, max_num_seqs=1, chunk_size=1)
    assert simulate(trace, "sync", settings)["makespan_s"] == [12.0]
    assert simulate(trace, "divided", settings)["makespan_s"] == [9.0]
    assert simulate(trace, "context_aware", settings)["makespan_s"] == [8.0]


def test_partial_rollout_carries_a_trajectory_and_counts_it_once():
    # 1 engine, segment 4. Iteration 0: X = 10 tokens gets 4 (t=0..4), carried. Iteration 1: X gets 4
    # more (t=0..4), the new 1-token Y ends at t=1. Iteration 2: X's last 2 (t=0..2), Z at t=1.
    # Makespans 4, 4, 2 = 10 s; finished tokens 0 + 1 + (10 + 1) = 12, X counted once, when it ends.
    # sync: makespans 10, 1, 1 = 12 s for the same 12 tokens.
    traces = [[Group(1, (10,))], [Group(1, (1,))], [Group(1, (1,))]]
    settings = unit_settings(segment_tokens=4)
    partial = simulate(traces, "partial", settings)
    assert partial["makespan_s"] == [4.0, 4.0, 2.0]
    assert partial["finished_tokens"] == 12 and partial["finished_samples"] == 3
    assert partial["throughput_tokens_per_s"] == pytest.approx(1.2)
    assert partial["unfinished_samples"] == 0
    sync = simulate(traces, "sync", settings)
    assert sync["makespan_s"] == [10.0, 1.0, 1.0] and sync["throughput_tokens_per_s"] == pytest.approx(1.0)


def test_partial_rollout_recomputes_the_carried_context_on_new_weights():
    # Prefill 0.5 s per token. Iteration 0: prompt 2 (1 s), then 4 tokens: 5 s, carried with context
    # 2 + 4 = 6. Iteration 1: new weights, so X prefills 6 tokens (3 s) and decodes its last 2: 5 s.
    cost = CostModel(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, prefill_token_s=0.5)
    r = simulate([[Group(2, (6,))], [Group(2, (1,))]], "partial", unit_settings(segment_tokens=4, cost=cost))
    # iteration 1 also prefills the new group's prompt (1 s), so: 1 + 3 + max(decode 2, 1) = 6
    assert r["makespan_s"] == [5.0, 6.0]
    assert r["prefill_s"] == pytest.approx(1 + 3 + 1)


def test_prompt_prefill_is_shared_by_the_group_on_an_engine():
    # Prefill 0.1 s per token: a group of 4 samples with a 10-token prompt prefills it once (1 s), then
    # decodes 5 tokens: 6 s. Under divided, chunks of 2 re-dispatched to the same engine keep their KV.
    cost = CostModel(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, prefill_token_s=0.1)
    trace = [[Group(10, (5, 5, 5, 5))]]
    assert simulate(trace, "sync", unit_settings(cost=cost))["makespan_s"] == [pytest.approx(6.0)]
    assert simulate(trace, "divided", unit_settings(cost=cost, chunk_tokens=2))["makespan_s"] == [
        pytest.approx(6.0)
    ]


def test_a_continuation_moved_to_another_engine_recomputes_without_a_global_kv_cache():
    # 2 engines x 2 slots, chunk_tokens 2, prefill 1 s per token, no prompt; one group (4, 2, 4).
    # t=0: s0 -> engine 0, s1 -> engine 1 (fewer sequences), s2 -> engine 0 (a tie: lowest index).
    # t=2: every chunk ends; s1 is done. s0 goes back to engine 0 (empty too, but its KV is there);
    #   s2 then goes to the less-loaded engine 1, where its 2-token context is not.
    # With the global KV cache it is fetched: both finish at t=4, no prefill.
    # Without: engine 1 recomputes 2 tokens (2 s, t=2..4), then decodes 2: t=6.
    cost = CostModel(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, prefill_token_s=1.0)
    trace = [[Group(0, (4, 2, 4))]]
    settings = unit_settings(engines=2, max_num_seqs=2, chunk_tokens=2, cost=cost)
    fetched = simulate(trace, "divided", settings)
    assert fetched["makespan_s"] == [4.0] and fetched["prefill_s"] == 0.0
    recomputed = simulate(trace, "divided", replace(settings, global_kv_cache=False))
    assert recomputed["makespan_s"] == [6.0] and recomputed["prefill_s"] == 2.0


def test_kv_pool_overflow_preempts_the_newest_and_recomputes_it():
    # Pool 20 tokens, 2 samples of 10, prompt 1: contexts 1 + 1 grow by 2 a step and fill the pool after
    # 9 steps (2 + 18 = 20). The newest is preempted (context 10); the other finishes its last token at
    # t=10, then the preempted one is readmitted (10 + 1 <= 20) and finishes at t=11.
    r = simulate([[Group(1, (10, 10))]], "sync", unit_settings(kv_pool_tokens=20))
    assert r["makespan_s"] == [11.0] and r["preemptions"] == 1
    assert r["finished_tokens"] == 20


def test_speculative_tokens_per_step():
    # (1 - a^(k+1)) / (1 - a): a = 0.5, k = 3: (1 - 1/16) / (1/2) = 1.875; a = 0: 1 (only the bonus
    # token); a = 1: every draft accepted, k + 1; a = 0.8, k = 4: (1 - 0.32768) / 0.2 = 3.3616.
    assert tokens_per_step(0.5, 3) == pytest.approx(1.875, abs=1e-12)
    assert tokens_per_step(0.0, 3) == 1.0
    assert tokens_per_step(1.0, 3) == 4.0
    assert tokens_per_step(0.8, 4) == pytest.approx(3.3616, abs=1e-12)


def test_speculative_decoding_divides_the_steps_and_pays_the_overhead():
    # 15 tokens at 1.875 tokens per step = 8 steps, each 1 s x 1.2 overhead: 9.6 s.
    settings = unit_settings(accept_rate=0.5, draft_tokens=3, spec_overhead=1.2)
    assert simulate([[Group(1, (15,))]], "speculative", settings)["makespan_s"] == [pytest.approx(9.6)]


def test_step_time_grows_with_cached_context():
    # t0 = 1 s, 0.1 s per cached token. One sample, prompt 10, 3 tokens: steps see contexts 10, 11, 12:
    # 2 + 2.1 + 2.2 = 6.3 s. Two such samples: contexts 20, 22, 24: 3 + 3.2 + 3.4 = 9.6 s.
    cost = CostModel(1.0, 0.0, 0.0, 0.0, 0.0, kv_s=0.1)
    one = simulate([[Group(10, (3,))]], "sync", unit_settings(cost=cost))
    two = simulate([[Group(10, (3, 3))]], "sync", unit_settings(cost=cost))
    assert one["makespan_s"] == [pytest.approx(6.3)] and two["makespan_s"] == [pytest.approx(9.6)]


def test_kimi_vl_cost_model_numbers_in_the_docstring():
    # module docstring: t(64, 64 x 8192) = 14.5 ms, t(1, 8192) = 2.0 ms, a 16K prefill 0.15 s
    cost = kimi_vl_a3b_cost()
    assert cost.step_s(64, 64 * 8192) == pytest.approx(14.48e-3, rel=1e-3)
    assert cost.step_s(1, 8192) == pytest.approx(2.034e-3, rel=1e-3)
    assert cost.prefill_s(0, 16384) == pytest.approx(0.1537, rel=1e-3)
    assert KV_BYTES_PER_TOKEN == 31_104


def test_model_constants_match_kvrl_plan():
    from actors.plan import kv_bytes_per_token, make_plan, model_shape
    from benchmarks import longtail_sim as sim
    from rl.trainer import RLConfig
    from runkit.config import load_config
    from tests.helpers import ROOT

    path = ROOT / "configs" / "kimi-vl-a3b" / "rl-1x8.yaml"
    shape = model_shape(ROOT / "configs" / "kimi-vl-a3b" / "model_config.json")
    assert (shape.params, shape.vision_params, shape.active_params) == (
        sim.PARAMS,
        sim.VISION_PARAMS,
        sim.ACTIVE_PARAMS,
    )
    assert kv_bytes_per_token(shape, 2) == sim.KV_BYTES_PER_TOKEN
    cfg = load_config(RLConfig, path)
    assert make_plan(cfg, path).kv_tokens == KV_POOL_TOKENS
    defaults = Settings()
    assert (defaults.engines, defaults.max_num_seqs, defaults.chunk_size) == (
        cfg.resources.rollout_actors,
        cfg.rollout.max_num_seqs,
        cfg.rollout.chunk_size,
    )


def test_synthetic_trace_is_heavy_tailed_correlated_and_reproducible():
    trace = synthetic_trace(200, 8, seed=3)
    assert trace == synthetic_trace(200, 8, seed=3) and trace != synthetic_trace(200, 8, seed=4)
    stats = describe_trace(trace)
    assert stats["samples"] == 1600 and stats["max"] <= 16384
    assert 3000 < stats["median"] < 5500  # median 4096 drawn
    assert stats["p99"] >= 12000  # the tail reaches 3x the median and beyond
    assert 0.4 < stats["group_share"] < 0.8  # 0.6 of the log-variance between groups, drawn
    flat = describe_trace(synthetic_trace(200, 8, seed=3, group_share=0.0))
    assert flat["group_share"] < 0.2


def test_all_beats_sync_on_a_heavy_tailed_trace():
    # Kimi-VL-A3B cost model, 2 engines (rl-1x8), a smaller batch than the real one to stay fast.
    traces = synthetic_traces(3, 16, 8, seed=0)
    results = compare(traces, Settings(chunk_size=2))
    assert set(results) == set(POLICIES)
    assert results["sync"]["throughput_vs_sync"] == 1.0
    assert results["all"]["throughput_vs_sync"] > 1.3
    assert results["all"]["tail_vs_sync"] < 0.7
    assert results["divided"]["makespan_vs_sync"] < 1.0
    for r in results.values():
        assert 0 < r["busy_fraction"] <= 1 + 1e-9 and math.isfinite(r["tail_s"])


def test_measured_traces_load_from_json_lines(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text(
        '{"iteration": 1, "prompt_tokens": 7, "response_tokens": [3]}\n'
        '{"iteration": 0, "prompt_tokens": 5, "response_tokens": [1, 2]}\n\n'
        '{"iteration": 0, "prompt_tokens": 6, "response_tokens": [4, 4]}\n'
    )
    assert load_traces(path) == [[Group(5, (1, 2)), Group(6, (4, 4))], [Group(7, (3,))]]


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="response lengths"):
        Group(10, ())
    with pytest.raises(ValueError, match="does not fit"):
        simulate([[Group(10, (100,))]], "sync", unit_settings(kv_pool_tokens=50))
