"""The shipped RL configs load, choose their passes on purpose and sample the policy itself; bad keys and
values in them are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl.trainer import RLConfig
from runkit.config import ConfigError, load_config
from tests.helpers import ROOT

SHIPPED = ["configs/tiny/rl.yaml", "configs/kimi-vl-a3b/rl-1x8.yaml", "configs/kimi-vl-a3b/rl-4x8.yaml"]


def comment_above(path: Path, key: str) -> str:
    """The comment lines right above ``key:`` in a YAML file."""
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
    above = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("#"):
            break
        above.append(line)
    return " ".join(reversed(above))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_say_why_they_make_their_passes(name):
    path = ROOT / name
    cfg = load_config(RLConfig, path)
    assert cfg.trainer.epochs_per_iteration == 2  # tau acts from the second pass on
    assert "tau" in comment_above(path, "optimizer_steps_per_iteration")
    if cfg.trainer.drop_zero_signal_groups:
        assert "departure from eq. 3" in comment_above(path, "drop_zero_signal_groups")


def test_the_demo_config_chooses_its_passes():
    from kvrl.demo import PROFILES, DemoPaths, rl_config

    trainer = rl_config(PROFILES["full"], DemoPaths(ROOT / "runs" / "unused"))["trainer"]
    assert trainer["epochs_per_iteration"] == 2 and trainer["optimizer_steps_per_iteration"] == 1
    template = ROOT / "configs/demo/rl.yaml"
    assert "tau term of eq. 3" in comment_above(template, "optimizer_steps_per_iteration")
    assert "departure from eq. 3" in comment_above(template, "drop_zero_signal_groups")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("rollout.sampling.temperature=0.7", "rollout.sampling.temperature=0.7"),
        ("rollout.sampling.top_p=0.9", "rollout.sampling.top_p=0.9"),
    ],
)
def test_rl_rollouts_must_sample_the_policy_unless_opted_out(override, key):
    path = ROOT / "configs/tiny/rl.yaml"
    with pytest.raises(ConfigError, match=f"{key}: RL rollouts must be samples of the policy itself"):
        load_config(RLConfig, path, [override])
    cfg = load_config(RLConfig, path, [override, "rollout.off_policy_sampling=true"])
    assert cfg.rollout.off_policy_sampling


def test_resume_with_other_learner_ranks_names_the_keys_before_anything_starts(tmp_path):
    import json

    from rl.trainer import Trainer

    ckpt = tmp_path / "iter_00004"
    (ckpt / "learner_state").mkdir(parents=True)
    state = {"iteration": 4, "sampler": {}, "learner": {"learner_ranks": 2, "zero_stage": 2}}
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    cfg = load_config(
        RLConfig,
        ROOT / "configs/tiny/rl.yaml",
        [f"trainer.resume={ckpt}", "resources.learner_ranks=4", f"trainer.output_dir={tmp_path / 'run'}"],
    )
    with pytest.raises(ValueError, match=r"written with resources.learner_ranks=2 \(this run: 4\)"):
        Trainer(cfg)


def test_unknown_keys_and_bad_values_name_the_key(tmp_path):
    path = ROOT / "configs/tiny/rl.yaml"
    cfg = load_config(RLConfig, path)
    assert cfg.trainer.iterations == 3 and cfg.rollout.sampling.n == 4 and cfg.learner.zero_stage == 2
    for override, message in [
        (["trainer.iteratons=3"], "unknown config key 'trainer.iteratons'"),
        (["trainer.iterations=three"], "trainer.iterations: expected an integer"),
        (["learner.zero_stage=4"], "learner.zero_stage: 4 is not one of"),
        (["loss.name=ppo9"], "unknown loss 'ppo9'"),
        (["rollout.sampling.top_p=1.5"], "top_p must be in"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(RLConfig, path, override)


def test_cuda_graphs_are_refused_where_routes_are_recorded():
    from rollout.engine import EngineConfig, eager_mode

    tiny = ROOT / "configs/tiny/rl.yaml"
    assert load_config(RLConfig, tiny, ["rollout.enforce_eager=false"]).rollout.enforce_eager is False
    for routes in ("trainer.routing_replay=true", "rollout.record_routes=true"):
        with pytest.raises(ConfigError, match=r"rollout\.enforce_eager=false cannot record routes"):
            load_config(RLConfig, tiny, ["rollout.enforce_eager=false", routes])
    # unset: eager on CPU or when recording routes, CUDA graphs otherwise; a setting wins
    assert [eager_mode(EngineConfig("m"), cpu) for cpu in (True, False)] == [True, False]
    assert eager_mode(EngineConfig("m", record_routes=True), cpu=False)
    assert eager_mode(EngineConfig("m", enforce_eager=True), cpu=False)
    with pytest.raises(ValueError, match="cannot record routes"):
        eager_mode(EngineConfig("m", enforce_eager=False, record_routes=True), cpu=False)
