"""The trainer's learn phase: advantages over whole groups, passes x steps, and the metrics it logs.

The learner group is stubbed here (it is tested for real in ``tests/actors/test_learner_group.py``):
these tests are about what the driver sends and how it reads what comes back.
"""

from __future__ import annotations

import pytest

from learner.experience import Experience
from rl.losses import Mean
from rl.trainer import Trainer, optimizer_steps


class RecordingGroup:
    """Answers like a learner group; records every optimizer step it is asked for."""

    def __init__(self, learner_logprobs, step_metrics):
        self.learner_logprobs, self.step_metrics, self.steps = learner_logprobs, step_metrics, []

    def logprobs(self, batch, replay=None):
        return [list(lp) for lp in self.learner_logprobs]

    def reset_optimizer(self):
        pass

    def train_step(self, samples, *args, **kwargs):
        self.steps.append([(s.group_id, s.advantage) for s in samples])
        return self.step_metrics[len(self.steps) - 1]


@pytest.fixture
def trainer_with(tiny_trainer):
    """A Trainer whose learner group is ``group`` (no actors: only learn() runs)."""

    def build(group, **trainer_keys) -> Trainer:
        trainer = tiny_trainer(*(f"trainer.{k}={v}" for k, v in trainer_keys.items()))
        trainer.learners = group
        return trainer

    return build


def two_groups() -> list[Experience]:
    # group 0 rewards [1, 0], group 1 rewards [1, 1]; sample 0's token 1 was forced (vLLM's placeholder 0.0)
    return [
        Experience([1], [2, 3, 4], reward=1.0, group_id=0, old_logprobs=[-1.0, 0.0, -2.0], forced=[1]),
        Experience([1], [5], reward=0.0, group_id=0, old_logprobs=[-1.5]),
        Experience([1], [6], reward=1.0, group_id=1, old_logprobs=[-0.5]),
        Experience([1], [7], reward=1.0, group_id=1, old_logprobs=[-0.7]),
    ]


OK = {"skipped": 0.0}


def test_logprob_gap_leaves_out_forced_tokens(trainer_with):
    # learner: the forced ◁/think▷ has log-prob -6 under the policy; vLLM reports a 0.0 placeholder there.
    # Sampled tokens differ by at most 0.01 (sample 0 token 2: |-2.0 - -2.01|).
    learner = [[-1.0, -6.0, -2.01], [-1.5], [-0.5], [-0.7]]
    metrics = trainer_with(RecordingGroup(learner, [OK])).learn(two_groups())
    assert metrics["rollout_learner_logprob_gap_max"] == pytest.approx(0.01)
    # 5 sampled tokens: gaps 0, 0.01, 0, 0, 0
    assert metrics["rollout_learner_logprob_gap_mean"] == pytest.approx(0.01 / 5)


def test_passes_times_steps_with_advantages_from_whole_groups(trainer_with):
    learner = [[-1.0, -6.0, -2.0], [-1.5], [-0.5], [-0.7]]
    group = RecordingGroup(learner, [OK] * 4)
    trainer = trainer_with(group, optimizer_steps_per_iteration=2, epochs_per_iteration=2)
    trainer.learn(two_groups())
    # 2 passes x 2 steps, each step one whole group; OPMD advantages r - mean over the group:
    # group 0: [1 - 0.5, 0 - 0.5], group 1: [0, 0]
    by_group = {0: [(0, 0.5), (0, -0.5)], 1: [(1, 0.0), (1, 0.0)]}
    assert group.steps == [by_group[0], by_group[1], by_group[0], by_group[1]]
    assert trainer.step == 4
    assert [[e.group_id for e in s] for s in optimizer_steps(two_groups(), 3, 2)] == [[0, 0], [1, 1]] * 2


def test_step_metrics_are_weighted_by_their_counts(trainer_with):
    # step 1: entropy 2.0 over 1 token; step 2: entropy 5.0 over 3 tokens -> (2 + 15) / 4 = 4.25
    steps = [
        {"skipped": Mean(0.0, 2.0), "entropy": Mean(2.0, 1.0), "loss": Mean(-1.0, 2.0)},
        {"skipped": Mean(0.0, 2.0), "entropy": Mean(15.0, 3.0), "loss": Mean(3.0, 2.0)},
    ]
    learner = [[-1.0, -6.0, -2.0], [-1.5], [-0.5], [-0.7]]
    metrics = trainer_with(RecordingGroup(learner, steps), optimizer_steps_per_iteration=2).learn(
        two_groups()
    )
    assert metrics["entropy"] == 4.25 and metrics["loss"] == 0.5 and metrics["skipped"] == 0.0


class RecordingOld(RecordingGroup):
    """Also records each sample's reference log-probs and loss mask start as train_step receives them."""

    def train_step(self, samples, *args, **kwargs):
        self.sent = [(list(s.old_logprobs), s.loss_from) for s in samples]
        return super().train_step(samples, *args, **kwargs)


def carried() -> list[Experience]:
    # sample 0 continued a partial rollout: its first 2 tokens were sampled by the previous policy
    # (rollout log-probs -1.0, -2.0), its last one by this one; sample 1 is all this policy's
    return [
        Experience([1], [2, 3, 4], reward=1.0, group_id=0, old_logprobs=[-1.0, -2.0, -3.0], stale=2),
        Experience([1], [5], reward=0.0, group_id=0, old_logprobs=[-1.5]),
    ]


def test_older_policys_tokens_keep_their_rollout_logprobs_as_reference(trainer_with):
    # stale_reference=sampling: the learner (this policy) scores the stale tokens -1.4 and -2.6; they
    # must stay -1.0 and -2.0 as the reference
    learner = [[-1.4, -2.6, -3.001], [-1.5]]
    group = RecordingOld(learner, [OK])
    metrics = trainer_with(group, stale_reference="sampling").learn(carried())
    assert group.sent == [([-1.0, -2.0, -3.001], 0), ([-1.5], 0)]
    # the monitor reads every token, the stale ones included: gaps 0.4, 0.6, 0.001, 0
    assert metrics["rollout_learner_logprob_gap_max"] == pytest.approx(0.6)
    assert metrics["mismatch_stale_token_share"] == 0.5
    # this policy's own tokens alone: k3 of log rho = -0.001 and 0, e^-0.001 - 1 + 0.001 = 5.0e-7, mean 2.5e-7
    assert metrics["mismatch_kl_fresh"] == pytest.approx(2.5e-7, rel=1e-3)


def test_masked_older_segments_carry_no_loss(tiny_trainer):
    from rl.trainer import Rollout
    from rollout.engine import Sample

    trainer = tiny_trainer("rollout.partial.enabled=true", "rollout.partial.old_segments=mask")
    problem = trainer.problems[0]
    rollout = Rollout(problem, 0, Sample([1], [2, 3, 4], [-1.0, -2.0, -3.0], "x", "stop"), stale=2, older=2)
    (e,) = trainer.experiences([rollout])
    assert (e.stale, e.loss_from) == (2, 2)
    from learner.experience import collate

    assert collate([e], pad_id=0).response_mask.tolist() == [[0.0, 0.0, 1.0]]


def sampled_ahead(trainer, iteration: int, version: int):
    """A batch for ``iteration`` that policy ``version`` sampled, with partial rollouts' older segments:
    sample 0 began one rollout earlier (its first token by policy ``version - 1``)."""
    from rl.partial import group_key
    from rl.trainer import Batch
    from rollout.trajectory import Trajectory

    problem = trainer.problems[0]
    first, second = (Trajectory(trainer._request(problem, iteration - 1), j) for j in range(2))
    first.extend([2], [-0.5], version - 1)
    first.extend([3, 4], [-1.0, -2.0], version)
    second.extend([5], [-1.5], version)
    for t in (first, second):
        t.prompt_ids, t.finish_reason = [1], "stop"
    assert first.group == group_key(problem.id, iteration - 1)
    return Batch(iteration, version, [problem], [[first, second]], {}, 0.0)


def test_a_fully_stale_batch_is_monitored_and_keeps_the_sampling_reference_when_asked(trainer_with):
    # Pipelined (trainer.max_staleness=1) with stale_reference=sampling: iteration 2's batch was sampled
    # by policy 1 while policy 2 learned iteration 1's, so every token is stale. The reference stays
    # policy 1's own log-probs (the rollout's), but the monitor still compares them with what policy 2
    # (the learner) gives the same tokens: it must not read "no gap" exactly when the policies differ.
    group = RecordingOld([[-0.6, -1.1, -2.2], [-1.4]], [OK])
    trainer = trainer_with(group, max_staleness=1, stale_reference="sampling")
    rollouts = trainer.flatten(sampled_ahead(trainer, iteration=2, version=1))
    assert [(r.stale, r.older) for r in rollouts] == [(3, 1), (1, 0)]
    for r in rollouts:
        r.reward = 1.0 if r.sample.response_token_ids[0] == 2 else 0.0
    metrics = trainer.learn(trainer.experiences(rollouts))
    assert trainer.learners.sent == [([-0.5, -1.0, -2.0], 0), ([-1.5], 0)]
    # log rho = learner - rollout: -0.1, -0.1, -0.2, +0.1; |.| max 0.2, mean 0.125
    assert metrics["rollout_learner_logprob_gap_max"] == pytest.approx(0.2)
    assert metrics["rollout_learner_logprob_gap_mean"] == pytest.approx(0.125)
    # k3 = e^x - 1 - x: 0.0048374, 0.0048374, 0.0187308, 0.0051709 -> mean 0.0083941
    assert metrics["mismatch_kl"] == pytest.approx(0.0083941, rel=1e-4)
    assert metrics["mismatch_stale_token_share"] == 1.0 and metrics["mismatch_kl_fresh"] == 0.0


def test_stale_reference_learning_takes_the_learning_policys_logprobs_for_every_token(trainer_with):
    # The default (trainer.stale_reference=learning): the same batch sampled ahead by policy 1, learned by
    # policy 2, which scores its tokens [-0.6, -1.1, -2.2] and [-1.4]; those are the reference now,
    # not the rollout's [-0.5, -1.0, -2.0] and [-1.5].
    group = RecordingOld([[-0.6, -1.1, -2.2], [-1.4]], [OK])
    trainer = trainer_with(group, max_staleness=1)
    rollouts = trainer.flatten(sampled_ahead(trainer, iteration=2, version=1))
    for r in rollouts:
        r.reward = 1.0 if r.sample.response_token_ids[0] == 2 else 0.0
    trainer.learn(trainer.experiences(rollouts))
    assert group.sent == [([-0.6, -1.1, -2.2], 0), ([-1.4], 0)]


def test_stale_reference_learning_needs_the_learners_logprobs(tiny_trainer):
    with pytest.raises(ValueError, match=r"stale_reference=learning needs trainer\.old_logprobs=learner"):
        tiny_trainer("trainer.max_staleness=1", "trainer.old_logprobs=rollout")


def test_pipelining_with_the_sampling_reference_warns_and_names_the_alternative(caplog):
    from rl.trainer import TrainerConfig, warn_stale_reference

    for staleness, reference in ((1, "sampling"), (1, "learning"), (0, "sampling")):
        caplog.clear()
        warn_stale_reference(TrainerConfig(max_staleness=staleness, stale_reference=reference))
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        if (staleness, reference) == (1, "sampling"):
            assert len(warned) == 1 and "trainer.stale_reference=learning" in warned[0], warned
        else:
            assert warned == [], (staleness, reference)


def test_masking_older_segments_masks_earlier_rollouts_not_the_pipeline_lag(trainer_with):
    # old_segments=mask drops what earlier rollouts sampled (sample 0's first token), not the tokens
    # the batch's own rollout sampled one version back
    trainer = trainer_with(RecordingOld([], [OK]), max_staleness=1)
    trainer.cfg.rollout.partial.old_segments = "mask"
    rollouts = trainer.flatten(sampled_ahead(trainer, iteration=2, version=1))
    assert [(e.stale, e.loss_from) for e in trainer.experiences(rollouts)] == [(3, 1), (1, 0)]


class RoutingGroup(RecordingGroup):
    """Answers log-probs by replay setting, as learners whose routing differs from the rollout's would."""

    def __init__(self, by_replay, step_metrics):
        super().__init__(by_replay[False], step_metrics)
        self.by_replay, self.asked = by_replay, []

    def logprobs(self, batch, replay=None):
        self.asked.append(replay)
        return [list(lp) for lp in self.by_replay[bool(replay)]]

    def routing_disagreement(self):
        return [0.25, 0.5]


def test_recorded_routes_report_routing_disagreement_and_the_gap_with_replay_the_other_way(trainer_with):
    import numpy as np

    batch = carried()
    for e in batch:
        e.routes = np.zeros((len(e.prompt_ids) + len(e.response_ids), 2, 1), dtype=np.uint8)
    # the rollout's log-probs: [-1.0, -2.0, -3.0] and [-1.5]; the learner's without replay differ by 0.1
    # on every token, with replay only on sample 0's last token (-3.01)
    group = RoutingGroup({False: [[-1.1, -2.1, -3.1], [-1.4]], True: [[-1.0, -2.0, -3.01], [-1.5]]}, [OK])
    metrics = trainer_with(group, routing_replay=True).learn(batch)
    assert group.asked == [True, False]  # the configured pass (replay), then one without
    assert metrics["routing_disagreement/layer_0"] == 0.25 and metrics["routing_disagreement/layer_1"] == 0.5
    # k3 of log rho: with replay one token at -0.01 -> (e^-0.01 - 1 + 0.01) / 4 = 1.2458e-5;
    # without, -0.1 three times and +0.1 once -> (3 * 0.0048374 + 0.0051709) / 4 = 0.0049208
    assert metrics["mismatch_kl"] == pytest.approx(1.2458e-5, rel=1e-3)
    assert metrics["mismatch_kl_replay_off"] == pytest.approx(0.0049208, rel=1e-4)
