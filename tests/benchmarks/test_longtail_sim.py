"""The rollout-scheduling simulator (benchmarks/longtail_sim.py) against schedules worked out by hand.

Most tests use a unit cost model: every decode step takes 1 s whatever the batch and context (t0 = 1,
c_kv = 0) and prefill is free, so a sequence of L tokens takes L seconds and the arithmetic is exact.
"""

from __future__ import annotations

import math
import random
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
    # 2 engines x 1 slot, chunk_tokens 2. Arrival: A = (6, 6), then B = (1, 1).
    # sync, chunk_size 1 group: engine 0 takes A (A0 t=0..6, A1 6..12), engine 1 takes B (0..1, 1..2):
    #   makespan 12; busy (12 + 2) / (2 x 12). chunk_size 2: engine 0 takes both groups: 14.
    # divided (rollout/schedule.py): an even share, ceil(4 / 2) = 2, dealt every 2nd in queue order:
    #   engine 0 takes A0, B0, engine 1 A1, B1; 4 samples for 2 slots, so each call is cut at a chunk:
    #   A t=0..2, B 2..3 on each. At t=3 A0 and A1 come back at 2 tokens, one to each engine (2 left
    #   for 2 slots: no cut): both end at t=7.
    trace = [[Group(1, (6, 6)), Group(1, (1, 1))]]
    settings = unit_settings(engines=2, max_num_seqs=1, chunk_size=1, chunk_tokens=2)
    sync = simulate(trace, "sync", settings)
    assert sync["makespan_s"] == [12.0] and sync["busy_fraction"] == pytest.approx(14 / 24)
    assert simulate(trace, "sync", replace(settings, chunk_size=2))["makespan_s"] == [14.0]
    divided = simulate(trace, "divided", settings)
    assert divided["makespan_s"] == [7.0] and divided["active"]["divided_chunked_calls"] == 0.5
    assert compare(trace, settings)["divided"]["makespan_vs_sync"] == pytest.approx(7 / 12)


def test_context_aware_orders_the_queue_by_its_estimates():
    # 2 engines x 1 slot, chunk_size 1, chunk_tokens 2; groups A = (1, 1), B = (3, 3), C = (4, 4).
    # sync: engine 0 runs A (t=0..2) then C (2..6, 6..10), engine 1 runs B (0..3, 3..6): 10.
    # divided: shares dealt every 2nd: engine 0 A0, B0, C0; engine 1 A1, B1, C1, each cut at 2 tokens:
    #   both return at t=5 (1 + 2 + 2), the queue is then B1, C1, B0, C0 (last returned first): engine 0
    #   takes B1, B0 (t=5..6, 6..7), engine 1 C1, C0 (5..7, 7..9): 9.
    # context_aware: the probes A0, B0, C0 first, then A1, B1, C1: engine 0 A0, C0, B1, engine 1 B0, A1,
    #   C1, both back at t=5; then B0, C0 to engine 0 (5..6, 6..8), C1, B1 to engine 1 (5..7, 7..8): 8.
    trace = [[Group(1, (1, 1)), Group(1, (3, 3)), Group(1, (4, 4))]]
    settings = unit_settings(engines=2, max_num_seqs=1, chunk_size=1, chunk_tokens=2)
    assert simulate(trace, "sync", settings)["makespan_s"] == [10.0]
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
    # 2 engines x 1 slot, chunk_tokens 2, prefill 1 s per token, no prompt; one group (1, 3, 1).
    # Shares dealt every 2nd: engine 0 takes s0, s2, engine 1 s1 (3 samples for 2 slots: cut at a
    #   chunk). Engine 0 runs s0 (t=0..1) and s2 (1..2); engine 1 runs s1 to its chunk's end, t=2.
    # t=2: s1 comes back and engine 0, first in index order, takes it (1 left: no cut), away from its
    #   KV. With the global KV cache its 2 tokens are fetched: it ends at t=3, no prefill. Without:
    #   engine 0 recomputes them (2 s, t=2..4), then decodes 1: t=5.
    cost = CostModel(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, prefill_token_s=1.0)
    trace = [[Group(0, (1, 3, 1))]]
    settings = unit_settings(engines=2, max_num_seqs=1, chunk_tokens=2, cost=cost)
    fetched = simulate(trace, "divided", settings)
    assert fetched["makespan_s"] == [3.0] and fetched["prefill_s"] == 0.0
    assert fetched["active"]["divided_chunked_calls"] == pytest.approx(2 / 3)
    recomputed = simulate(trace, "divided", replace(settings, global_kv_cache=False))
    assert recomputed["makespan_s"] == [5.0] and recomputed["prefill_s"] == 2.0


def test_the_adaptive_gate_drafts_where_drafting_pays():
    # s1 of a group (10, 10) on 1 slot, as above. A draft yields 2 tokens for a step of 1.4 s (1.43
    # tokens/s against 1): the gate drafts on 15 steps of 16. A draft that costs 2.2 s (0.91 tokens/s)
    # loses: it drafts on 1 step of 16 only (to notice a change).
    cheap = CostModel(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, draft_s=0.2, draft_token_s=0.1)
    costly = replace(cheap, draft_s=1.0)
    settings = unit_settings(max_num_seqs=1, accepted_per_draft=1.0, draft_tokens=2.0, spec_adaptive=True)
    share = {}
    for name, cost in (("cheap", cheap), ("costly", costly)):
        r = simulate([[Group(1, (10, 10))]], "speculative", replace(settings, cost=cost))
        share[name] = r["active"]["speculative_draft_steps"]
    # s0's 10 steps never draft; s1 drafts on a share g of its steps, gaining 1 + g tokens a step
    assert share["cheap"] == pytest.approx((15 / 16) * (10 / (1 + 15 / 16)) / (10 + 10 / (1 + 15 / 16)))
    assert share["costly"] == pytest.approx((1 / 16) * (10 / (1 + 1 / 16)) / (10 + 10 / (1 + 1 / 16)))


def test_each_unit_of_work_pays_its_call_overhead_before_it_runs():
    # 1 engine, chunk_size 1 group: 2 units of one 3-token group of 2 samples each. Each unit costs
    # 0.5 s + 0.25 s per request = 1 s before its 3 steps: 4 s a unit, 8 s in all.
    settings = unit_settings(chunk_size=1, call_s=0.5, call_request_s=0.25)
    r = simulate([[Group(1, (3, 3)), Group(1, (3, 3))]], "sync", settings)
    assert r["makespan_s"] == [8.0]


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


def test_a_sample_drafts_only_where_a_sibling_has_text():
    # 1 engine x 1 slot, one group (10, 10): s0 runs alone, 10 steps of 1 s, with no sibling that has
    # text (no draft). s1 then has s0's response: it drafts every step, 2 tokens drafted and 1
    # accepted per draft, so 2 tokens a step: 5 steps of 1 + 0.2 (per draft) + 2 x 0.1 (per drafted
    # token) = 1.4 s: 7 s. Makespan 17; 5 of 15 sequence-steps drafted. Without speculation: 20.
    cost = CostModel(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, draft_s=0.2, draft_token_s=0.1)
    settings = unit_settings(
        max_num_seqs=1, accepted_per_draft=1.0, draft_tokens=2.0, cost=cost, spec_adaptive=False
    )
    spec = simulate([[Group(1, (10, 10))]], "speculative", settings)
    assert spec["makespan_s"] == [pytest.approx(17.0)]
    assert spec["active"]["speculative_draft_steps"] == pytest.approx(5 / 15)
    assert simulate([[Group(1, (10, 10))]], "sync", settings)["makespan_s"] == [pytest.approx(20.0)]
    # at 2 slots both run together, each with a sibling that has text: 5 steps of 1 + 2 x 0.2 + 4 x 0.1
    both = simulate([[Group(1, (10, 10))]], "speculative", replace(settings, max_num_seqs=2))
    assert both["makespan_s"] == [pytest.approx(9.0)] and both["active"]["speculative_draft_steps"] == 1.0
    # a draft found on half the steps it may draft: 1.5 tokens a step, each step 1 + 0.1 + 0.1 = 1.2 s;
    # s1's 10 tokens take 10 / 1.5 steps: 8 s, so 18 in all
    half = simulate([[Group(1, (10, 10))]], "speculative", replace(settings, draft_rate=0.5))
    assert half["makespan_s"] == [pytest.approx(18.0)]
    # spec_max_batch 1, 2 slots, one group (4, 10, 10): s0 and s1 run together (t=0..4), 2 sequences:
    # no draft; s2 starts at t=4, 2 sequences again: no draft. s1 ends at t=10, s2 is at 6 and runs
    # alone: it drafts, 4 tokens in 2 steps of 1.4 s: t=12.8.
    capped = replace(settings, max_num_seqs=2, spec_max_batch=1)
    assert simulate([[Group(1, (4, 10, 10))]], "speculative", capped)["makespan_s"] == [pytest.approx(12.8)]


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
    from benchmarks import sim_cost as sim
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
    cfg = load_config(RLConfig, path, list(sim.SIM_LAYOUT))
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


def test_the_cpu_cost_fit_recovers_known_coefficients():
    # Calls timed by a known model (2 ms a step, 0.5 ms a sequence-step, 1 us a context token-step,
    # 20 us a prefilled token, 3 ms a draft, none per drafted token): the fit gives them back, and the
    # drafted-token term, which would come out negative on noise, stays at 0.
    from benchmarks.sim_cost import fit_cost

    rng = random.Random(0)
    calls = []
    for _ in range(60):
        c = {"steps": rng.randint(10, 200), "prefill_tokens": rng.randint(0, 2000)}
        c["seq_steps"] = c["steps"] * rng.randint(1, 8)
        c["context_steps"] = c["seq_steps"] * rng.randint(20, 300)
        c["drafts"] = rng.randint(0, c["steps"])
        c["draft_tokens"] = 2 * c["drafts"]
        exact = 2e-3 * c["steps"] + 5e-4 * c["seq_steps"] + 1e-6 * c["context_steps"]
        exact += 2e-5 * c["prefill_tokens"] + 3e-3 * c["drafts"]
        c["seconds"] = exact * (1 + rng.uniform(-0.001, 0.001))
        calls.append(c)
    cost, fit = fit_cost(calls)
    assert cost.fixed_s == pytest.approx(2e-3, rel=0.02) and cost.seq_s == pytest.approx(5e-4, rel=0.02)
    assert cost.kv_s == pytest.approx(1e-6, rel=0.05)
    assert cost.prefill_token_s == pytest.approx(2e-5, rel=0.05)
    assert cost.draft_s + 2 * cost.draft_token_s == pytest.approx(3e-3, rel=0.05)
    assert min(fit["terms"].values()) >= 0 and fit["r2"] > 0.999
    with pytest.raises(ValueError, match="at least 12 engine calls"):
        fit_cost(calls[:3])
